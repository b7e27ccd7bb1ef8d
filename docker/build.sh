#!/usr/bin/env bash
# Build the bhd image with its version, date and git revision filled in.
#
#   docker/build.sh [cuda|cpu] [extra docker build args...]
#     cuda (default): tag bhd:<version>       CUDA build of torch from PyPI
#     cpu:            tag bhd:<version>-cpu   CPU build of torch (docker/wheels/README.md)
#
# Environment: BASE_IMAGE (default debian:bookworm-slim; docker/make_base_image.sh makes it offline),
# DOCKER_BUILD_NETWORK (e.g. host, when the daemon runs with --bridge=none).
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
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- bhd_app setup.cfg pyproject.toml 2>/dev/null)" ]; then revision=$revision-dirty; fi
network=()
[ -n "${DOCKER_BUILD_NETWORK:-}" ] && network=(--network "$DOCKER_BUILD_NETWORK")
set -x
docker build "${network[@]}" \
    --build-arg BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}" \
    --build-arg TORCH_VARIANT="$variant" \
    --build-arg BHD_VERSION="$version" \
    --build-arg BHD_IMAGE_TAG="$tag" \
    --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --build-arg VCS_REF="$revision" \
    -t "$tag" "$@" .
