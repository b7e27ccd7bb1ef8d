#!/usr/bin/env bash
# The recipe of the shipped simulated-trio model (bhd_app/data/models/bhd_default.pt is its EMA at step 2366):
# 16 simulated target-domain subjects, width 16, 48^3 patches, batch 4, lr 1e-4, half the training times from
# U(0.5, 1). Resumable from training/default-w16/checkpoint.pt (git-ignored); from a fresh clone it starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bhd-train training/default-w16 --synthetic 16 --width 16 --patch-size 48 --batch-size 4 --lr 1e-4 \
    --late-time-fraction 0.5 \
    --parameterization image --compile --checkpoint-minutes 5 --validate-minutes 20 --seed 0 \
    --export bhd_app/data/models/bhd_default.pt --compact-state training/default-w16/compact_state.pt "$@"
