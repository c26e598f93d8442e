#!/bin/sh
# Build a Python 3.11 base image from Debian's own packages, for machines that cannot
# pull python:3.11.14-slim-bookworm (no registry access) but reach a Debian mirror.
# The result is passed to the Dockerfiles through their PYTHON_IMAGE argument
# (`make images PYTHON_IMAGE=localhost/ser-python:3.11-bookworm`, or mk/images.mk's
# images-check, which calls this script when the image is missing).
#
# Needs: root, debootstrap, buildah.  Usage: images/base-debian.sh [TAG]
# Env: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
#      BUILDAH (buildah --storage-driver vfs).
set -eu
TAG=${1:-localhost/ser-python:3.11-bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDAH=${BUILDAH:-buildah --storage-driver vfs}

for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "base-debian.sh needs $tool (apt-get install -y $tool)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "base-debian.sh needs root (debootstrap writes device nodes and owners)" >&2; exit 1; }

ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/ser-rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT INT TERM
# minbase: dpkg, apt and the "required" set (passwd for useradd); python3.11-venv
# brings ensurepip, which `python -m venv` in the Dockerfiles needs; debootstrap does
# not resolve the dependencies of --include, so python3-distutils is named too.
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR"
# The Dockerfiles call `python`, as the official python image provides it.
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3"
# The official slim image's size discipline: no apt lists, no docs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*

ctr=$($BUILDAH from scratch)
$BUILDAH copy "$ctr" "$ROOTFS" / >/dev/null
$BUILDAH config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd python3 \
  --label org.opencontainers.image.description="Debian $SUITE python3.11 (debootstrap)" "$ctr"
$BUILDAH commit --rm "$ctr" "$TAG" >/dev/null
echo "built $TAG"
