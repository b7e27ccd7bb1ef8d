#!/usr/bin/env bash
# The shipped ixi-hh-coarse model, on a CPU: the ixi-hh model (stage 2, train_changed_cpu.sh) fine-tuned on the
# 2x coarser model grid (grid factor 2: 2.4 mm, so a 48^3 patch holds most of the brain), with changed starts: the
# fine-tune recipe (bhd-train --recipe fine-tune, config.TRAINING_FINE_TUNE).
#
# Target data: the first 16 IXI Hammersmith (Philips Intera 3T) training heads of subjects.txt (IXI dataset,
# brain-development.org, CC BY-SA 3.0), through the participant level's own preprocessing (runs/ixi-hh-16/data.npz,
# about 5 min on 2 cores); bhd-train takes them to the coarse grid. ixi-hh-coarse is this run after 60
# minutes on one core (1174 steps), run beside the equal-time control on the harmonization grid
# (benchmarks/studies/coarse_grid.py; its numbers are in git history). MINUTES bounds the training time of one call; resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d work/ixi-hh/train ] || python training/ixi_hh_bids.py work/ixi-hh
HERE=training/ixi-hh
STAGE2=${STAGE2:-bhd_app/data/models/bhd_ixihh.pt}
exec bhd-train runs/ixi-hh-coarse-grid --bids-dir work/ixi-hh/train \
    --participant-label $(tr ' ' '\n' < $HERE/subjects.txt | head -16) --nprocs 2 \
    --init-from "$STAGE2" --recipe fine-tune \
    --time-budget "${MINUTES:-60}" --validate-minutes 0 --threads 1 \
    --export bhd_app/data/models/bhd_ixihh_coarse.pt "$@"
