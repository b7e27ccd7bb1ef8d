#!/usr/bin/env bash
# Train (or resume) the width-32 edge-to-image model on the real IXI-HH target domain, on one GPU.
#
# Needs runs/ixi-hh-w32/data.npz, made on any CPU machine by
#   python training/ixi_hh_bids.py work/ixi-hh
#   bhd-train runs/ixi-hh-w32 --bids-dir work/ixi-hh/train --participant-label $(cat training/ixi-hh/subjects.txt) \
#       --nprocs 2 --prepare-only
# Resumes from runs/ixi-hh-w32/checkpoint.pt, else from training/ixi-hh/compact_state_w32.pt(.part*) and the
# exported model beside it. Writes the EMA model and the compact state into OUT (default training/ixi-hh),
# in parts of at most 15 MB, and the loss log. MINUTES (default 7) bounds the training time of this call;
# further arguments go to bhd-train.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/ixi-hh-w32}
HERE=${HERE:-training/ixi-hh}
OUT=${OUT:-$HERE}
MINUTES=${MINUTES:-7}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

join_parts() { [ -e "$1.part00" ] && cat "$1".part?? > "$1" || true; }
mkdir -p "$RUN/state"
for f in compact_state.pt bhd_ixihh_w32.pt; do
    [ -e "$RUN/state/$f" ] || { join_parts "$HERE/$f"; [ -e "$HERE/$f" ] && mv "$HERE/$f" "$RUN/state/$f"; } || true
done
[ -e "$HERE/bhd_ixihh_w32.json" ] && cp "$HERE/bhd_ixihh_w32.json" "$RUN/state/"

python3 -m bhd_app.cli.train "$RUN" --bids-dir work/ixi-hh/train \
    --width 32 --patch-size 64 --batch-size 8 --lr 2e-4 --parameterization image \
    --mixed-precision --time-budget "$MINUTES" --checkpoint-minutes 3 --validate-minutes 0 \
    --compact-state "$RUN/state/compact_state.pt" --export "$RUN/state/bhd_ixihh_w32.pt" "$@"

mkdir -p "$OUT"
for f in compact_state.pt bhd_ixihh_w32.pt; do
    rm -f "$OUT/$f".part??
    split -b 15M -d "$RUN/state/$f" "$OUT/$f.part"
done
cp "$RUN/state/bhd_ixihh_w32.json" "$RUN/loss.tsv" "$RUN/config.json" "$OUT/"
