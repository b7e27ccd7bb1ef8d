#!/usr/bin/env bash
# The ixi-hh-coarse model trained on across sessions, validated on held-out IXI-HH subjects 1-3 (IXI206, IXI282,
# IXI327; the choice subjects of BENCHMARKS.md; test subjects 4-6 stay unseen): every 10 minutes bhd-train alters
# them by known scanner changes, harmonizes them back at the participant defaults and scores them beside
# histogram matching and histogram matching + NCC (RUN_DIR/validation.tsv; benchmarks/plot_training.py draws it).
# Target data: the first 16 IXI Hammersmith training heads (IXI dataset, brain-development.org, CC BY-SA 3.0).
# Resumable: run it again, in this session or a later one; the compact state (committed) carries the weights
# and step to a fresh machine. MINUTES bounds one call.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d work/ixi-hh/all ] || python training/ixi_hh_bids.py work/ixi-hh
HERE=training/ixi-hh
exec bhd-train runs/ixi-hh-coarse-continued --bids-dir work/ixi-hh/all \
    --participant-label $(tr ' ' '\n' < $HERE/subjects.txt | head -16) --validation-label IXI206 IXI282 IXI327 \
    --nprocs 2 --init-from bhd_app/data/models/bhd_ixihh_coarse.pt --recipe fine-tune \
    --time-budget "${MINUTES:-60}" --validate-minutes 10 \
    --compact-state $HERE/compact_state_coarse.pt --export runs/ixi-hh-coarse-continued/model.pt "$@"
