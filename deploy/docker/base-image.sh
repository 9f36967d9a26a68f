#!/usr/bin/env bash
# A Debian base image for tunegate's images where no container registry can be reached: a debootstrap rootfs
# imported with `docker import`, then python3 + venv + CA certificates from Debian's packages.
#   deploy/docker/base-image.sh [TAG]        (default tunegate-base:bookworm; ~3 min, root, needs debootstrap)
# Then build with --build-arg BASE_IMAGE=tunegate-base:bookworm. With a registry, use python:3.12-slim instead.
set -euo pipefail
tag=${1:-tunegate-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag exists"; exit 0; fi
root=$(mktemp -d /tmp/tunegate-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv,python3-pip,libgomp1,libnuma1,procps \
  "$suite" "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag"
echo "built $tag"
