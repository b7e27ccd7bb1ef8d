#!/usr/bin/env bash
# Stage 2 of the shipped ixi-hh model, on a CPU: fine-tune stage 1 (train_cpu.sh) with changed starts.
#
# Half of the training paths start from the target patch with random scanner-like changes, histogram-matched
# back, at t ~ U(0.8, 0.95) (bhd-train --altered-start-fraction; bhd_app/training/scanner_changes.py), as the
# T1w sampler starts from the source: the fine-tune recipe (config.TRAINING_FINE_TUNE) on the harmonization grid.
# Target data: the first 16 IXI Hammersmith (Philips Intera 3T) training heads of subjects.txt (IXI dataset,
# brain-development.org, CC BY-SA 3.0), through the participant level's own preprocessing (runs/ixi-hh-16/data.npz,
# about 5 min on 2 cores). The shipped model is this run after 40 minutes on one core (670 steps). MINUTES bounds
# the training time of one call; resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d work/ixi-hh/train ] || python training/ixi_hh_bids.py work/ixi-hh
HERE=training/ixi-hh
STAGE1=${STAGE1:-runs/ixi-hh-w16/bhd_ixihh_stage1.pt}  # train_cpu.sh's export
exec bhd-train runs/ixi-hh-changed --bids-dir work/ixi-hh/train \
    --participant-label $(tr ' ' '\n' < $HERE/subjects.txt | head -16) --nprocs 2 \
    --init-from "$STAGE1" --recipe fine-tune --grid-factor 1 \
    --time-budget "${MINUTES:-40}" --validate-minutes 0 --threads 1 \
    --export bhd_app/data/models/bhd_ixihh.pt "$@"
