#!/usr/bin/env bash
# Build the node's image from ./Dockerfile with podman and check it, on a machine without a Docker engine or
# registry access (see "Building the Dockerfile" in ../shared/NOTES.md):
#
#   1. a Debian bookworm minbase root made with debootstrap (cached under /var/tmp, so reruns are fast) and
#      imported as localhost/debian:bookworm-min: the Dockerfile's BASE_IMAGE
#   2. podman build --isolation=chroot --network=host, with pip's CA bundle mounted and passed as PIP_CERT
#   3. `podman run` does not work here (rlimits), so the check runs the entrypoint under chroot in the mounted
#      image, as the image's user: `dicom-node --help`
#
# Not part of scripts/test.sh (minutes). Needs root. Environment: IMAGE (default localhost/dicom-node:dev),
# MIRROR (default: the Debian mirror of this machine's apt sources), CACHE (default /var/tmp/dicom-node-build).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-localhost/dicom-node:dev}"
BASE="localhost/debian:bookworm-min"
CACHE="${CACHE:-/var/tmp/dicom-node-build}"
ROOTFS="${CACHE}/bookworm-minbase"

step() { printf '[build_image] %s\n' "$*"; }
die() { step "error: $*" >&2; exit 1; }

[[ ${EUID} -eq 0 ]] || die "run as root (debootstrap, podman --isolation=chroot and chroot need it)"
start=${SECONDS}

# 0. Tools ------------------------------------------------------------------------------------------------------
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [[ ${#need[@]} -gt 0 ]]; then
    step "apt-get install ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
else
    step "podman and debootstrap present"
fi

# 1. Base image: debootstrap minbase root, cached -----------------------------------------------------------------
if [[ -z "${MIRROR:-}" ]]; then
    # The first Debian (not security) mirror of the apt sources, deb822 or one-line format.
    MIRROR="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | grep '/debian/\?$' | head -n1 || true)"
    [[ -n "${MIRROR}" ]] || MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' | grep -v security | grep '/debian/\?$' | head -n1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
if [[ -f "${ROOTFS}/.complete" ]]; then
    step "debootstrap root: cached at ${ROOTFS}"
else
    step "debootstrap --variant=minbase bookworm ${ROOTFS} ${MIRROR}"
    rm -rf "${ROOTFS}"
    mkdir -p "${CACHE}"
    debootstrap --variant=minbase bookworm "${ROOTFS}" "${MIRROR}" > "${CACHE}/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see ${CACHE}/debootstrap.log"
    rm -rf "${ROOTFS}"/var/cache/apt/archives/*.deb "${ROOTFS}"/var/lib/apt/lists/*
    touch "${ROOTFS}/.complete"
fi
if podman image exists "${BASE}" && [[ "${CACHE}/.imported" -nt "${ROOTFS}/.complete" ]]; then
    step "base image ${BASE}: present"
else
    step "podman import ${ROOTFS} ${BASE}"
    tar -C "${ROOTFS}" --exclude=./.complete -c . | podman import - "${BASE}" >/dev/null
    touch "${CACHE}/.imported"
fi

# 2. Build ----------------------------------------------------------------------------------------------------
# pip's CA bundle on this machine (a TLS-intercepting proxy may sit between us and PyPI).
ca="${PIP_CERT:-}"
if [[ -z "${ca}" ]] && command -v python3 >/dev/null 2>&1; then
    ca="$(python3 -m pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -n1 || true)"
fi
build_args=(--build-arg "BASE_IMAGE=${BASE}")
volumes=()
if [[ -n "${ca}" && -f "${ca}" ]]; then
    step "pip CA bundle: ${ca}"
    volumes+=(-v "${ca}:/etc/ssl/certs/host-ca.crt:ro")
    build_args+=(--build-arg "PIP_CERT=/etc/ssl/certs/host-ca.crt")
fi
step "podman build -t ${IMAGE} (log: ${CACHE}/build.log)"
build_start=${SECONDS}
if ! podman build --isolation=chroot --network=host "${volumes[@]}" "${build_args[@]}" \
        -t "${IMAGE}" -f "${REPO}/Dockerfile" "${REPO}" > "${CACHE}/build.log" 2>&1; then
    tail -n 40 "${CACHE}/build.log" >&2
    die "podman build failed, see ${CACHE}/build.log"
fi
step "built ${IMAGE} in $((SECONDS - build_start)) s"

# 3. Check: the entrypoint runs, as the image's user ----------------------------------------------------------------
CHROOT="$(command -v chroot)"
mnt="$(podman image mount "${IMAGE}")"
trap 'podman image unmount "${IMAGE}" >/dev/null 2>&1 || true' EXIT
entrypoint="$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "${IMAGE}")"
user="$(podman image inspect --format '{{.Config.User}}' "${IMAGE}")"
[[ "${entrypoint}" == /opt/dicom-node/bin/dicom-node ]] || die "unexpected entrypoint: ${entrypoint}"
uid="$(awk -F: -v u="${user}" '$1 == u {print $3 ":" $4}' "${mnt}/etc/passwd")"
[[ -n "${uid}" && "${uid}" != 0:* ]] || die "the image must run as a non-root user (User=${user:-unset})"
step "check: chroot --userspec=${user}(${uid}) ${entrypoint} --help"
if ! env -i PATH=/opt/dicom-node/bin:/usr/bin:/bin HOME=/data "${CHROOT}" --userspec="${uid}" "${mnt}" "${entrypoint}" --help; then
    env -i PATH=/opt/dicom-node/bin:/usr/bin:/bin HOME=/data "${CHROOT}" --userspec="${uid}" "${mnt}" \
        /opt/dicom-node/bin/python -c 'import node; print("import node: ok")' || true
    die "${entrypoint} --help failed in the image"
fi
step "ok: ${IMAGE} ($(podman image inspect --format '{{.Size}}' "${IMAGE}" | awk '{printf "%.0f MB", $1 / 1e6}')) in $((SECONDS - start)) s"
