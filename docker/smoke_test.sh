#!/usr/bin/env bash
# Smoke test of the bhd container image, as docker/README.md documents it: build the CPU image (timed;
# no untagged image may stay behind), check that it does not run as root by default, then run the
# participant and group levels of "Run (Docker)" as written (read-only root filesystem, no network,
# --user of the caller) and check the derivatives.
#
#   docker/smoke_test.sh                        # build bhd:<version>-cpu, run sub-02 / ses-vida
#   SKIP_BUILD=1 docker/smoke_test.sh           # reuse the built image
#   SMOKE_SESSIONS="vida trio" docker/smoke_test.sh
#
# The input is a copy of bids_examples/ds-travel (generated with the image's Python when missing) in
# $SMOKE_DIR/bids, as docker/README.md suggests. Run as root, the script plays user $SMOKE_UID, who
# creates out and work and runs the image.
#
# Environment: IMAGE (default bhd:<version>-cpu), SMOKE_DIR (default a new /tmp/bhd-smoke.*), SMOKE_UID
# (default 1234:1234), SMOKE_SUBJECT (02), SMOKE_SESSIONS (vida), SMOKE_ARGS (extra bhd-app participant
# options, e.g. "--method histmatch"), SKIP_BUILD. Needs a docker daemon, the base image
# (docker/make_base_image.sh) and, to build, torch's CPU wheel in docker/wheels/ (build.sh copies it from
# pip's find-links when it is there). The host's python3 needs only its standard library.
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
    dangling_before=$(docker images -q --no-trunc -f dangling=true | sort)
    t0=$(now)
    docker/build.sh cpu -t "$IMAGE"
    build_s="$(elapsed "$t0" "$(now)") s"
    new_dangling=$(comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc -f dangling=true | sort))
    [ -z "$new_dangling" ] || fail "docker/build.sh left untagged images behind: $new_dangling"
    echo "ok no untagged image left behind"
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
OUT=$SMOKE_DIR/out
say "input: a copy of $SOURCE -> $SMOKE_DIR/bids"
rm -rf "$SMOKE_DIR/bids"
cp -r "$SOURCE" "$SMOKE_DIR/bids"
# As README.md says: the user creates out and work, then runs the image as themself. Run as root, this
# script plays user $SMOKE_UID, who owns $SMOKE_DIR.
as_user() {
    if [ "$(id -u)" = 0 ]; then setpriv --reuid "${SMOKE_UID%:*}" --regid "${SMOKE_UID#*:}" --clear-groups "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown "$SMOKE_UID" "$SMOKE_DIR"
cd "$SMOKE_DIR"
as_user mkdir -p out work

# the two commands of docker/README.md, "Run (Docker)"
run=(docker run --rm --read-only --tmpfs /tmp --network none --user "$SMOKE_UID")
participant=("${run[@]}" -v "$PWD/bids:/data:ro" -v "$PWD/out:/out" -v "$PWD/work:/work" "$IMAGE")
group=("${run[@]}" -v "$PWD/bids:/data:ro" -v "$PWD/out:/out" "$IMAGE")

say "participant level"
# shellcheck disable=SC2086
echo "+ ${participant[*]} /data /out participant -w /work $SMOKE_LABELS $SMOKE_ARGS"
t0=$(now)
# shellcheck disable=SC2086
"${participant[@]}" /data /out participant -w /work $SMOKE_LABELS $SMOKE_ARGS || fail "participant level: exit $?"
participant_s=$(elapsed "$t0" "$(now)")

say "group level"
echo "+ ${group[*]} /data /out group"
t0=$(now)
"${group[@]}" /data /out group || fail "group level: exit $?"
group_s=$(elapsed "$t0" "$(now)")

say "checks"
python3 - "$OUT" "$container_tag" "$SMOKE_UID" <<'PY' || fail "the derivatives (above)"
import json, sys
from pathlib import Path

out, tag, uid = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3].split(":")[0])
errors = []
# every job's files (README.md, "Outputs"), named after its native-grid harmonized image: desc-harmonized_T1w for
# a T1w input, desc-harmonizedT2w_T1w for a T2w input converted to the T1w contrast
GRID = "space-MNI152NLin2009aSym_res-1p2_"


def siblings(entity):  # "" for a T1w input, "T2w" for a T2w input
    src = entity or "T1w"
    return (f"desc-harmonized{entity}_T1w.json", f"desc-brain{entity}_mask.nii.gz", f"desc-brain{entity}_mask.json",
            GRID + f"desc-preproc_{src}.nii.gz", GRID + f"desc-brain{entity}_mask.nii.gz",
            GRID + f"desc-edges{entity}_mask.nii.gz", GRID + f"desc-harmonized{entity}_T1w.nii.gz",
            GRID + f"desc-harmonized{entity}_T1w.json", f"from-{src}_to-MNI152NLin2009aSym_mode-image_xfm.mat")


native = sorted(p for p in out.rglob("*_desc-harmonized*_T1w.nii.gz") if "_space-" not in p.name)
if not native:
    errors.append("no *_desc-harmonized*_T1w.nii.gz (native grid) in the output")
for image in native:
    prefix, rest = image.name.split("desc-harmonized")
    entity = rest[: -len("_T1w.nii.gz")]
    missing = [prefix + s for s in siblings(entity) if not (image.parent / (prefix + s)).is_file()]
    if missing:
        errors.append(f"{image.relative_to(out)}: missing {', '.join(missing)}")
    else:
        model = json.loads(image.with_name(prefix + siblings(entity)[0]).read_text())["Harmonization"]["ModelFile"]
        print("ok", image.relative_to(out), f"({image.stat().st_size / 1e6:.1f} MB) and its", len(siblings(entity)),
              "companions; model", model)
reports = [p for p in out.glob("*.html") if p.name != "group_report.html"]
if len(reports) != len(native):
    errors.append(f"{len(reports)} participant HTML reports for {len(native)} jobs")
partial = [p for p in out.rglob(".*.tmp")]
if partial:
    errors.append(f"partial files left: {partial[:3]}")
desc = json.loads((out / "dataset_description.json").read_text())
containers = [g.get("Container") for g in desc.get("GeneratedBy", []) if g.get("Container")]
if {"Type": "docker", "Tag": tag} not in containers:
    errors.append(f"dataset_description.json: GeneratedBy has no Container {{'Type': 'docker', 'Tag': '{tag}'}}: {containers}")
else:
    print("ok dataset_description.json GeneratedBy Container:", containers[0])
for name in ("logs/CITATION.md", "group_bhd.tsv", "group_report.html"):
    if (out / name).is_file():
        print("ok", name)
    else:
        errors.append(f"no {name}")
foreign = [p for p in out.rglob("*") if p.stat().st_uid != uid]
if foreign:
    errors.append(f"{len(foreign)} output files not owned by uid {uid}, e.g. {foreign[0]}")
else:
    print("ok every output file belongs to uid", uid)
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
