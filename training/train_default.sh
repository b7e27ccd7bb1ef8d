#!/usr/bin/env bash
# The training campaign of the shipped default model (issue 9). Resumable: run it again to go on.
# Sessions here end after 180 minutes: pass --time-budget MINUTES to stop in time; the full checkpoint
# (with Adam moments) stays in training/default-w16/ (git-ignored), the compact state and the exported
# model are committed, and a fresh clone continues from them (fresh optimizer, 200-step warm-up).
# Since step 685: lr 1e-4 (2e-4 was noisy) and half of the training times drawn from U(0.5, 1), where the
# T1w sampling (start 0.7 then, 0.9 since session 3) integrates. Pass --threads 1 to leave a core free for other work.
# Since session 4: --compile (torch.compile: 3-28 % faster steps once compiled; benchmarks/train_throughput.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bhd-train training/default-w16 --synthetic 16 --width 16 --patch-size 48 --batch-size 4 --lr 1e-4 \
    --late-time-fraction 0.5 \
    --parameterization image --compile --checkpoint-minutes 5 --validate-minutes 20 --seed 0 \
    --export bhd_app/data/models/bhd_default.pt --compact-state training/default-w16/compact_state.pt "$@"
