#!/usr/bin/env bash
# Build a local "debian:bookworm-slim" base image from the Debian archive with debootstrap, for build
# hosts that reach deb.debian.org (or a Debian mirror) but not Docker Hub.
#
#   docker/make_base_image.sh [TAG] [MIRROR]     (as root)
#     TAG     image tag to create            (default: debian:bookworm-slim, what the Dockerfile's FROM uses)
#     MIRROR  Debian mirror                   (default: http://deb.debian.org/debian)
#
# Needs: root, debootstrap, a running docker daemon. Takes minutes (docker/RESULTS.md); the image is about 104 MB.
# Like the official slim image it excludes man pages, docs and locales from later apt installs.
set -euo pipefail

TAG=${1:-debian:bookworm-slim}
MIRROR=${2:-http://deb.debian.org/debian}
SUITE=bookworm

if [ "$(id -u)" != 0 ]; then echo "make_base_image.sh: run as root (debootstrap needs it)" >&2; exit 1; fi
command -v debootstrap >/dev/null || { echo "make_base_image.sh: apt-get install debootstrap" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "make_base_image.sh: no docker daemon (start dockerd first)" >&2; exit 1; }

ROOTFS=$(mktemp -d /tmp/bhd-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"

# apt sources: main, updates and security, from the same mirror host.
SECURITY=${MIRROR%/debian}/debian-security
cat > "$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SRC

# slim: no docs, man pages or locales from later package installs (as debian:*-slim does).
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
DPKG
# apt inside containers: no caches left behind, no recommends.
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
APT

rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*
find "$ROOTFS"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete   # keep the licenses, as -slim does
find "$ROOTFS"/usr/share/doc -mindepth 1 -type d -empty -delete

changes=(--change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
stage=bhd-base-stage:debootstrap
tar --numeric-owner -C "$ROOTFS" -c . | docker import "${changes[@]}" - "$stage"

# debootstrap takes the release as published; add bookworm-updates and bookworm-security, then flatten.
container=$(docker create "$stage" bash -c \
    'apt-get update && apt-get -y upgrade && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log')
docker start -a "$container"
docker export "$container" \
  | docker import "${changes[@]}" --message "debootstrap --variant=minbase $SUITE $MIRROR + upgrade" - "$TAG"
docker rm "$container" >/dev/null
docker rmi "$stage" >/dev/null
docker image ls "$TAG"
