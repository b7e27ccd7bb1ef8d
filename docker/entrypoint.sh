#!/bin/bash
# Entrypoint of the bhd image: runs bhd-app (or bhd-train when the first argument is "bhd-train") as any
# user id, on a read-only root filesystem, without network.
#
# Everything that a run writes outside the output and work directories goes under TMPDIR (default /tmp,
# e.g. `docker run --tmpfs /tmp`): HOME, the matplotlib/XDG/torch/triton/numba/deno caches and nipype's
# config dir. When a location set in the image's environment is not writable (read-only /tmp, or a
# /tmp/bhd-home made by another user on a shared /tmp under Singularity), it is moved to a writable
# scratch folder: $TMPDIR/bhd-<uid>, or, when TMPDIR itself is read-only, <work dir>/tmp (from -w;
# default ./work, i.e. /work/work in the image).
set -euo pipefail

writable() { mkdir -p -- "$1" 2>/dev/null && [ -d "$1" ] && [ -w "$1" ] && [ -x "$1" ]; }

command=bhd-app
case "${1:-}" in bhd-app|bhd-train) command=$1; shift ;; esac

# The work directory, as bhd-app parses it: -w DIR, -wDIR, --work-dir DIR, --work-dir=DIR.
work="" prev=""
for arg in "$@"; do
    case "$prev" in -w|--work-dir) work=$arg ;; esac
    case "$arg" in --work-dir=*) work=${arg#--work-dir=} ;; -w?*) work=${arg#-w} ;; esac
    prev=$arg
done

for arg in "$@"; do
    case "$arg" in -h|--help|--version) exec "$command" "$@" ;; esac   # writes nothing
done

if ! writable "${TMPDIR:=/tmp}"; then
    work=${work:-$PWD/work}   # bhd-app's default work directory
    if writable "$work/tmp"; then
        TMPDIR=$(cd "$work/tmp" && pwd)
    else
        echo "bhd: no writable temporary directory ($TMPDIR is read-only): run with --tmpfs /tmp" \
             "(Docker) or pass -w WORK_DIR on a writable volume" >&2
        exit 2
    fi
fi
export TMPDIR

scratch=""
relocate() {  # relocate VAR SUBDIR: keep $VAR when writable, else use <scratch>/SUBDIR
    local var=$1 value=${!1:-}
    if [ -n "$value" ] && writable "$value"; then return 0; fi
    if [ -z "$scratch" ]; then
        scratch=$TMPDIR/bhd-$(id -u)
        writable "$scratch" || scratch=$(mktemp -d "$TMPDIR/bhd-$(id -u).XXXXXX")
    fi
    printf -v "$var" '%s' "$scratch/$2"
    export "${var?}"
    mkdir -p -- "${!var}"
}
relocate HOME home
relocate XDG_CACHE_HOME home/.cache
relocate XDG_CONFIG_HOME home/.config
relocate MPLCONFIGDIR home/.config/matplotlib
relocate NIPYPE_CONFIG_DIR home/.nipype
relocate TORCH_HOME home/.cache/torch
relocate TRITON_CACHE_DIR home/.cache/triton
relocate NUMBA_CACHE_DIR home/.cache/numba
relocate DENO_DIR home/.cache/deno

# matplotlib's font list, built when the image was built: saves rebuilding it on every run.
if ! compgen -G "$MPLCONFIGDIR/fontlist-*.json" >/dev/null; then
    cp /opt/bhd/matplotlib/fontlist-*.json "$MPLCONFIGDIR"/ 2>/dev/null || true
fi

# An arbitrary --user has no passwd entry: name it for getpass.getuser() (crash file names, provenance).
if [ -z "${USER:-}" ]; then USER=$(id -un 2>/dev/null) || USER=uid$(id -u); fi
export USER LOGNAME=${LOGNAME:-$USER}

exec "$command" "$@"
