#!/usr/bin/env bash
# Build the bhd image with its version, date and git revision filled in.
#
#   docker/build.sh [cuda|cpu] [extra docker build args...]
#     cuda (default): tag bhd:<version>       CUDA build of torch from PyPI
#     cpu:            tag bhd:<version>-cpu   CPU build of torch (docker/wheels/README.md)
#
# Environment: BASE_IMAGE (default debian:bookworm-slim; docker/make_base_image.sh makes it offline),
# DOCKER_BUILD_NETWORK (e.g. host, when the daemon runs with --bridge=none).
#
# The host's extra CA certificates (/usr/local/share/ca-certificates/*.crt, e.g. of a TLS-intercepting
# proxy) are copied into docker/ca-certificates/ for the build stage when that folder has none. For the
# cpu variant, torch's CPU wheel is copied into docker/wheels/ from pip's find-links (PIP_FIND_LINKS,
# `pip config get global.find-links`) when that folder has none and the wheel is there. The
# image's created date is the last commit's, so that rebuilding an unchanged checkout gives the same
# image. Docker's classic builder keeps the build stage's image, untagged, as the cache of later builds:
# it is tagged bhd-build:<version>[-cpu] (`docker image rm` it to free its ~2 GB; the next build then
# starts from scratch). The images that a rebuild leaves untagged (the previous image and build stage
# of these tags) are removed, so no build leaves a dangling image behind.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-cuda}
shift || true
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' bhd_app/__init__.py)
[ -n "$version" ] || { echo "build.sh: no __version__ in bhd_app/__init__.py" >&2; exit 1; }
case "$variant" in
    cuda) tag=bhd:$version ;;
    cpu) tag=bhd:$version-cpu ;;
    *) echo "build.sh: variant is cuda or cpu" >&2; exit 1 ;;
esac
if ! compgen -G "docker/ca-certificates/*.crt" >/dev/null && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    echo "build.sh: copying this host's extra CA certificates to docker/ca-certificates/ (TLS-intercepting proxy)"
    cp /usr/local/share/ca-certificates/*.crt docker/ca-certificates/
fi
torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile | head -n 1)
wheel="torch-$torch_version+cpu-cp311-*.whl"
if [ "$variant" = cpu ] && ! compgen -G "docker/wheels/$wheel" >/dev/null; then
    for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true); do
        found=$(compgen -G "${dir#file://}/$wheel" | head -n 1) || continue
        echo "build.sh: copying $found to docker/wheels/"
        cp "$found" docker/wheels/
        break
    done
fi
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
created=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- bhd_app setup.cfg pyproject.toml 2>/dev/null)" ]; then revision=$revision-dirty; fi
stage_tag=bhd-build:${tag#*:}
previous=$(docker image inspect -f '{{.Id}}' "$tag" "$stage_tag" 2>/dev/null || true)
network=()
[ -n "${DOCKER_BUILD_NETWORK:-}" ] && network=(--network "$DOCKER_BUILD_NETWORK")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set -x
docker build --force-rm "${network[@]}" \
    --build-arg BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}" \
    --build-arg TORCH_VARIANT="$variant" \
    --build-arg BHD_VERSION="$version" \
    --build-arg BHD_IMAGE_TAG="$tag" \
    --build-arg BUILD_DATE="$created" \
    --build-arg VCS_REF="$revision" \
    -t "$tag" "$@" . | tee "$log"
set +x
# The build stage's image: the classic builder's last " ---> ID" before the second FROM (BuildKit keeps
# no such image and prints no such lines).
stage=$(awk '/^ ---> [0-9a-f]+$/ { id = $2 } /^Step [0-9]+\/[0-9]+ : FROM / { if (id) { print id; exit } }' "$log")
[ -z "$stage" ] || docker tag "$stage" "$stage_tag"
for id in $previous; do
    if [ -z "$(docker image inspect -f '{{.RepoTags}}' "$id" 2>/dev/null | tr -d '[]')" ]; then
        docker image rm "$id" >/dev/null 2>&1 && echo "build.sh: removed $id, which this build left untagged" || true
    fi
done
