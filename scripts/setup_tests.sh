#!/usr/bin/env bash
# What the test suite needs besides the node's own runtime, idempotently (fast when everything is already there):
# the real peers the tests run against. scripts/test.sh runs this; the demo (scripts/demo.sh) needs none of it.
#
#   1. Debian packages: TEST_APT_PACKAGES below (one line per peer: add yours there)
#   2. npm packages:    TEST_NPM_PACKAGES below, installed into .cache/npm/node_modules; OHIF's prebuilt viewer
#                       (`npm pack @ohif/app@3.13.2`, its dist/ unpacked into .cache/ohif/3.13.2/); the tests'
#                       identity provider, oidc-provider, at the version pinned in tests/support/oidc/package.json
#                       + package-lock.json (`npm ci` into .cache/oidc-provider/<version>/)
#   3. the Debian orthanc service disabled and its own process stopped (scripts/disable_orthanc_service.sh):
#      tests start their own Orthanc on free ports; no other Orthanc is touched
#   4. the node's runtime with the test extra: EXTRAS=test scripts/setup_runtime.sh (Python packages the tests
#      use, hl7apy or pytest plugins, go in pyproject.toml's `test` extra, not here)
#
# Run as root, or as a user with sudo. PYTHON=/path/to/python overrides python3.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# shellcheck source=scripts/setup_common.sh
source "${REPO}/scripts/setup_common.sh"

# The peers (Debian). The tests start their own servers on free loopback ports; the Debian services are left as
# the packages set them up (orthanc's excepted, step 3).
TEST_APT_PACKAGES=(
    dcmtk                 # storescu, echoscu, storescp, findscu...: the DICOM peers
    orthanc               # the test PACS
    orthanc-dicomweb      # Orthanc's DICOMweb plugin: the STOW-RS / QIDO-RS / WADO-RS peer
    orthanc-postgresql    # Orthanc on PostgreSQL (the cluster compose file's PACS)
    dicom3tools           # dciodvfy: validates every object the writers make
    dcm2niix              # reference NIfTI geometry for MedImageParse 3D
    pixelmed-apps         # PixelMed's DicomSRValidator
    default-jre-headless  # ... and the Java it runs on
    chromium              # headless browser: OHIF and the status page
    chromium-driver
    postgresql            # the cluster tests and the PostgreSQL pass
    redis-server          # the cluster's queue
    haproxy               # the cluster's balancer
    strace                # the durability test: fsync before the C-STORE response, read at the system calls
    rsyslog               # the ATNA audit record repository (started by the tests on a free loopback port)
    rsyslog-gnutls        # ... and its TLS transport
    npm                   # fetches OHIF and TEST_NPM_PACKAGES (skipped when a Node.js with its own npm is there)
)
# npm packages the tests run, each as name@version (exact), into .cache/npm/node_modules (a test harness takes
# them from there, e.g. .cache/npm/node_modules/.bin/NAME).
TEST_NPM_PACKAGES=(
    fhir@4.12.0           # FHIR.js, one of the two R4 validators of the tests' EHR (tests/support/fhir_receiver.py)
)
OHIF_VERSION=3.13.2
OHIF_DIR="${REPO}/.cache/ohif/${OHIF_VERSION}"
NPM_PREFIX="${REPO}/.cache/npm"

# 1. Debian packages -------------------------------------------------------------------------------------------
apt=()
for pkg in "${TEST_APT_PACKAGES[@]}"; do
    # Debian's npm conflicts with a Node.js that brings its own: keep that one
    if [[ "${pkg}" == npm ]] && command -v npm >/dev/null 2>&1; then continue; fi
    apt+=("${pkg}")
done
apt_install "${apt[@]}"
step "apt: ${TEST_APT_PACKAGES[*]} installed"

# 2. npm -------------------------------------------------------------------------------------------------------
if [[ -f "${OHIF_DIR}/dist/index.html" ]]; then
    step "OHIF ${OHIF_VERSION}: cached in ${OHIF_DIR}"
else
    step "OHIF ${OHIF_VERSION}: npm pack @ohif/app@${OHIF_VERSION} -> ${OHIF_DIR}"
    tmp="$(mktemp -d)"
    (cd "${tmp}" && npm pack --silent "@ohif/app@${OHIF_VERSION}" >/dev/null)
    mkdir -p "${tmp}/x"
    tar -xzf "${tmp}"/ohif-app-"${OHIF_VERSION}".tgz -C "${tmp}/x" package/dist
    rm -rf "${OHIF_DIR}"
    mkdir -p "$(dirname "${OHIF_DIR}")"
    mv "${tmp}/x/package" "${OHIF_DIR}"
    rm -rf "${tmp}"
fi
npm_missing=()
for spec in "${TEST_NPM_PACKAGES[@]}"; do
    name="${spec%@*}"; version="${spec##*@}"
    have="$(PKG="${NPM_PREFIX}/node_modules/${name}/package.json" "${PYTHON}" -c \
        'import json, os; print(json.load(open(os.environ["PKG"]))["version"])' 2>/dev/null || true)"
    [[ "${have}" == "${version}" ]] || npm_missing+=("${spec}")
done
if [[ ${#npm_missing[@]} -gt 0 ]]; then
    step "npm install --prefix ${NPM_PREFIX} ${npm_missing[*]}"
    mkdir -p "${NPM_PREFIX}"
    npm install --silent --no-audit --no-fund --prefix "${NPM_PREFIX}" "${npm_missing[@]}"
elif [[ ${#TEST_NPM_PACKAGES[@]} -gt 0 ]]; then
    step "npm: ${TEST_NPM_PACKAGES[*]} installed in ${NPM_PREFIX}"
fi

# The tests' identity provider, oidc-provider, from its lock file (cached: nothing fetched when installed)
OIDC_SRC="${REPO}/tests/support/oidc"
OIDC_VERSION="$("${PYTHON}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["oidc-provider"])' "${OIDC_SRC}/package.json")"
OIDC_DIR="${REPO}/.cache/oidc-provider/${OIDC_VERSION}"
if [[ -f "${OIDC_DIR}/node_modules/oidc-provider/package.json" ]] && cmp -s "${OIDC_SRC}/package-lock.json" "${OIDC_DIR}/package-lock.json"; then
    step "oidc-provider ${OIDC_VERSION}: cached in ${OIDC_DIR}"
else
    step "oidc-provider ${OIDC_VERSION}: npm ci -> ${OIDC_DIR}"
    rm -rf "${OIDC_DIR}"
    mkdir -p "${OIDC_DIR}"
    cp "${OIDC_SRC}/package.json" "${OIDC_SRC}/package-lock.json" "${OIDC_DIR}/"
    (cd "${OIDC_DIR}" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --silent)
fi

# 3. The Debian orthanc service must not run (nor come back at boot) --------------------------------------------
# Only the service's own process is stopped (pid file / systemd MainPID, checked to be /usr/sbin/Orthanc with
# /etc/orthanc): other Orthanc servers on the machine, e.g. the tests' of another checkout, are left running.
PYTHON="${PYTHON}" bash "${REPO}/scripts/disable_orthanc_service.sh"

# 4. The node's runtime, with the test extra ---------------------------------------------------------------------
EXTRAS=test PYTHON="${PYTHON}" bash "${REPO}/scripts/setup_runtime.sh"
step "done"
