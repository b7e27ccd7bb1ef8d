#!/usr/bin/env bash
# Fine-tune the shipped width-16 model on the real IXI-HH target domain on a CPU. Resumable: run it again.
#
# Target data: 48 IXI Hammersmith (Philips Intera 3T) T1w heads (IXI dataset, brain-development.org,
# CC BY-SA 3.0), each through the participant level's own preprocessing (prepared once into
# runs/ixi-hh-w16/data.npz, ~15 min on 2 cores). The 16 held-out subjects of training/ixi_hh_bids.py
# are never seen. MINUTES (default 90) bounds the training time of one call; further arguments go to bhd-train.
# This is stage 1 of the shipped ixi-hh model (1126 steps, 50 min); train_changed_cpu.sh is stage 2. The fine-tune
# recipe (config.TRAINING_FINE_TUNE) on the harmonization grid, without changed starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d work/ixi-hh/train ] || python training/ixi_hh_bids.py work/ixi-hh
HERE=training/ixi-hh
exec bhd-train runs/ixi-hh-w16 --bids-dir work/ixi-hh/train --participant-label $(cat $HERE/subjects.txt) --nprocs 2 \
    --init-from bhd_app/data/models/bhd_default.pt --recipe fine-tune --grid-factor 1 --altered-start-fraction 0 \
    --time-budget "${MINUTES:-90}" --validate-minutes 0 \
    --compact-state $HERE/compact_state_w16.pt --export runs/ixi-hh-w16/bhd_ixihh_stage1.pt "$@"
