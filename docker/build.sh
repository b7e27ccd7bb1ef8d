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
# proxy) are copied into docker/ca-certificates/ for the build stage when that folder has none. The
# image's created date is the last commit's, so that rebuilding an unchanged checkout gives the same
# image; the bhd image the tag pointed to before, left untagged by a rebuild, is removed.
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
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
created=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- bhd_app setup.cfg pyproject.toml 2>/dev/null)" ]; then revision=$revision-dirty; fi
previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
network=()
[ -n "${DOCKER_BUILD_NETWORK:-}" ] && network=(--network "$DOCKER_BUILD_NETWORK")
set -x
docker build "${network[@]}" \
    --build-arg BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}" \
    --build-arg TORCH_VARIANT="$variant" \
    --build-arg BHD_VERSION="$version" \
    --build-arg BHD_IMAGE_TAG="$tag" \
    --build-arg BUILD_DATE="$created" \
    --build-arg VCS_REF="$revision" \
    -t "$tag" "$@" .
set +x
if [ -n "$previous" ] && [ -z "$(docker image inspect -f '{{.RepoTags}}' "$previous" 2>/dev/null | tr -d '[]')" ]; then
    docker image rm "$previous" >/dev/null 2>&1 && echo "build.sh: removed the previous, now untagged $tag ($previous)" || true
fi
