#!/usr/bin/env bash
# Smoke test of the bhd container image: build the CPU image (timed), then run the participant and
# group levels as an arbitrary user, on a read-only root filesystem, without network, and check the
# derivatives.
#
#   docker/smoke_test.sh                        # build bhd:<version>-cpu, run on sub-02 / ses-vida
#   SKIP_BUILD=1 docker/smoke_test.sh           # reuse the built image
#   SMOKE_SESSIONS="vida trio" docker/smoke_test.sh
#
# The input is a subset of bids_examples/ds-travel (generated when missing) copied to
# $SMOKE_DIR/bids: subject $SMOKE_SUBJECT (02), sessions $SMOKE_SESSIONS (vida), participants.tsv
# filtered to match, so that the BIDS validator passes and concurrent regenerations do not interfere.
#
# Environment: IMAGE (default bhd:<version>-cpu), SMOKE_DIR (outputs; default a new /tmp/bhd-smoke.*),
# SMOKE_UID (the user the run plays when started as root; default 1234:1234), SMOKE_SUBJECT, SMOKE_SESSIONS, SMOKE_ARGS (extra bhd-app participant
# options, e.g. "--method histmatch"), SKIP_BUILD. Needs a docker daemon, the base image
# (docker/make_base_image.sh) and, to build the CPU variant, torch's CPU wheel in docker/wheels/ (build.sh
# copies it from pip's find-links when it is there). The host's python3 needs only its standard library.
# It also checks that the image does not run as root by default.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' bhd_app/__init__.py)
IMAGE=${IMAGE:-bhd:$version-cpu}
if [ "$(id -u)" = 0 ]; then SMOKE_UID=${SMOKE_UID:-1234:1234}; else SMOKE_UID="$(id -u):$(id -g)"; fi
SMOKE_SUBJECT=${SMOKE_SUBJECT:-02}
SMOKE_SESSIONS=${SMOKE_SESSIONS:-vida}
SMOKE_LABELS="--participant-label $SMOKE_SUBJECT --session-label $SMOKE_SESSIONS"
SMOKE_ARGS=${SMOKE_ARGS:-}
SOURCE=$REPO/bids_examples/ds-travel

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE TEST FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

docker info >/dev/null 2>&1 || fail "no docker daemon (start dockerd; see docker/README.md)"

build_s="skipped (SKIP_BUILD)"
if [ -z "${SKIP_BUILD:-}" ]; then
    docker image inspect "${BASE_IMAGE:-debian:bookworm-slim}" >/dev/null 2>&1 \
        || fail "no ${BASE_IMAGE:-debian:bookworm-slim} image: run docker/make_base_image.sh (or docker pull it)"
    say "build $IMAGE"
    t0=$(now)
    docker/build.sh cpu -t "$IMAGE"
    build_s="$(elapsed "$t0" "$(now)") s"
fi
size_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
size=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e9:.2f} GB')" "$size_bytes")
container_tag=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^BHD_CONTAINER_TAG=//p')

say "default user"
default_user=$(docker run --rm --network none --entrypoint id "$IMAGE" -u)
[ "$default_user" != 0 ] || fail "$IMAGE runs as root by default (no USER in the Dockerfile)"
echo "ok $IMAGE runs as uid $default_user without --user"

if [ ! -f "$SOURCE/dataset_description.json" ]; then
    # with the image's Python: the host's python3 need not have nibabel or bhd_app
    say "generate $SOURCE (in the image)"
    docker run --rm --network none --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$REPO/bids_examples:/examples" \
        --entrypoint python "$IMAGE" /examples/make_examples.py /examples/ds-travel
fi

SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d /tmp/bhd-smoke.XXXXXX)}
DATASET=$SMOKE_DIR/bids OUT=$SMOKE_DIR/out WORK=$SMOKE_DIR/work
say "input: sub-$SMOKE_SUBJECT, ses-{${SMOKE_SESSIONS// /,}} of $SOURCE -> $DATASET"
rm -rf "$DATASET"
# shellcheck disable=SC2086
python3 - "$SOURCE" "$DATASET" "$SMOKE_SUBJECT" $SMOKE_SESSIONS <<'PY'
import shutil, sys
from pathlib import Path

src, dst, subject, sessions = Path(sys.argv[1]), Path(sys.argv[2]), "sub-" + sys.argv[3], sys.argv[4:]
dst.mkdir(parents=True)
for f in src.iterdir():
    if f.is_file() and f.name != "participants.tsv":
        shutil.copy2(f, dst / f.name)
lines = (src / "participants.tsv").read_text().splitlines()
(dst / "participants.tsv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0] == subject]) + "\n")
for f in (src / subject).iterdir():
    if f.is_file():
        shutil.copy2(f, dst / subject / f.name)
for ses in sessions:
    if not (src / subject / f"ses-{ses}").is_dir():
        sys.exit(f"{src}: no {subject}/ses-{ses}")
    shutil.copytree(src / subject / f"ses-{ses}", dst / subject / f"ses-{ses}")
print(sum(1 for _ in dst.rglob("*.nii*")), "images")
PY
# As README.md says: the user creates out and work, then runs the image as themself. Run as root, this
# script plays user $SMOKE_UID, who owns $SMOKE_DIR.
as_user() {
    if [ "$(id -u)" = 0 ]; then setpriv --reuid "${SMOKE_UID%:*}" --regid "${SMOKE_UID#*:}" --clear-groups "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown "$SMOKE_UID" "$SMOKE_DIR"
cd "$SMOKE_DIR"
as_user mkdir -p out work

run=(docker run --rm --read-only --tmpfs /tmp --network none --user "$SMOKE_UID"
     -v "$PWD/bids:/data:ro" -v "$PWD/out:/out" -v "$PWD/work:/work" "$IMAGE")

say "participant level"
# shellcheck disable=SC2086
echo "+ ${run[*]} /data /out participant -w /work $SMOKE_LABELS $SMOKE_ARGS"
t0=$(now)
# shellcheck disable=SC2086
"${run[@]}" /data /out participant -w /work $SMOKE_LABELS $SMOKE_ARGS || fail "participant level: exit $?"
participant_s=$(elapsed "$t0" "$(now)")

say "group level"
echo "+ ${run[*]} /data /out group"
t0=$(now)
"${run[@]}" /data /out group || fail "group level: exit $?"
group_s=$(elapsed "$t0" "$(now)")

say "checks"
python3 - "$OUT" "$container_tag" "$SMOKE_UID" <<'PY'
import json, os, sys
from pathlib import Path

out, tag, uid = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3].split(":")[0])
errors = []
native = sorted(p for p in out.rglob("*_desc-harmonized_T1w.nii.gz") if "_space-" not in p.name)
if not native:
    errors.append("no *_desc-harmonized_T1w.nii.gz (native grid) in the output")
for image in native:
    sidecar = image.with_name(image.name.replace(".nii.gz", ".json"))
    if not sidecar.is_file():
        errors.append(f"{image.name}: no sidecar {sidecar.name}")
    else:
        json.loads(sidecar.read_text())
    print("ok", image.relative_to(out), f"({image.stat().st_size / 1e6:.1f} MB) + {sidecar.name}")
desc = json.loads((out / "dataset_description.json").read_text())
containers = [g.get("Container") for g in desc.get("GeneratedBy", []) if g.get("Container")]
if {"Type": "docker", "Tag": tag} not in containers:
    errors.append(f"dataset_description.json: GeneratedBy has no Container {{'Type': 'docker', 'Tag': '{tag}'}}: {containers}")
else:
    print("ok dataset_description.json GeneratedBy Container:", containers[0])
for name in ("group_bhd.tsv",):
    if (out / name).is_file():
        print("ok", name)
    else:
        errors.append(f"the group level wrote no {name}")
foreign = [p for p in out.rglob("*") if p.stat().st_uid != uid]
if foreign:
    errors.append(f"{len(foreign)} output files not owned by uid {uid}, e.g. {foreign[0]}")
if errors:
    print("\n".join("FAILED " + e for e in errors), file=sys.stderr)
    sys.exit(1)
PY

say "summary"
cat <<SUMMARY
image              $IMAGE ($size, $size_bytes bytes)
build              ${build_s}
participant level  ${participant_s} s   ($SMOKE_LABELS $SMOKE_ARGS)
group level        ${group_s} s
outputs            $OUT
SMOKE TEST PASSED
SUMMARY
