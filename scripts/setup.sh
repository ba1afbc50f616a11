#!/usr/bin/env bash
# Install what the test suite needs, idempotently; fast when everything is already there.
#
#   - Debian packages: dcmtk (storescu/echoscu/... peers), orthanc (test PACS), dicom3tools (dciodvfy),
#     dcm2niix (reference NIfTI geometry); for the DICOMweb and viewer tests: orthanc-dicomweb (DICOMweb plugin: the STOW-RS/QIDO-RS/WADO-RS peer), chromium and
#     chromium-driver (headless browser), pixelmed-apps + default-jre-headless (PixelMed's SR validator),
#     npm (to fetch OHIF); for the cluster tests: postgresql, redis-server, haproxy (the tests start their own
#     servers on free loopback ports; the Debian services are left as the package set them up); for the ATNA
#     tests: rsyslog + rsyslog-gnutls (the audit record repository, started by the tests on a free loopback port)
#   - OHIF 3.13.2's prebuilt viewer: `npm pack @ohif/app@3.13.2`, its dist/ unpacked into .cache/ohif/3.13.2/
#   - the tests' identity provider: oidc-provider (npm, OpenID Certified), the version pinned in
#     tests/support/oidc/package.json + package-lock.json, `npm ci` into .cache/oidc-provider/<version>/
#   - npm's fhir@4.12.0 (FHIR R4 validator of the Hospital IT tests) in .cache/npm/
#   - the Debian orthanc service is disabled and its own process stopped (scripts/disable_orthanc_service.sh):
#     tests start their own Orthanc on free ports; no other Orthanc is touched
#   - this project, editable, with its test extra: python3 -m pip install -e ".[test]"
#
# Run as root, or as a user with sudo. PYTHON=/path/to/python overrides python3.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(dcmtk orthanc dicom3tools dcm2niix orthanc-dicomweb chromium chromium-driver pixelmed-apps
              default-jre-headless postgresql redis-server haproxy orthanc-postgresql rsyslog rsyslog-gnutls)
OHIF_VERSION=3.13.2
OHIF_DIR="${REPO}/.cache/ohif/${OHIF_VERSION}"

step() { printf '[setup] %s\n' "$*"; }

SUDO=()
if [[ ${EUID} -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi
as_root() {
    if [[ ${EUID} -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
        step "need root for: $*" >&2
        return 1
    fi
    "${SUDO[@]}" "$@"
}

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

# 1. Debian packages -------------------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do installed "${pkg}" || missing+=("${pkg}"); done
# npm fetches OHIF: Debian's npm unless a Node.js with its own npm is already installed (they conflict)
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    missing+=(python3 python3-pip python3-venv)
elif ! "${PYTHON}" -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    step "apt: ${APT_PACKAGES[*]} already installed"
else
    if [[ ${EUID} -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
        step "not root and no sudo: as root, run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    step "apt-get update"
    as_root apt-get update -q
    step "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. The Debian orthanc service must not run (nor come back at boot) --------------------------------------------
# Only the service's own process is stopped (pid file / systemd MainPID, checked to be /usr/sbin/Orthanc with
# /etc/orthanc): other Orthanc servers on the machine, e.g. the tests' of another checkout, are left running.
PYTHON="${PYTHON}" bash "${REPO}/scripts/disable_orthanc_service.sh"

# 3. OHIF's prebuilt viewer, from the npm registry (cached: nothing is fetched when it is already there) ----------
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

# 3b. npm's fhir package (FHIR.js), one of the two R4 validators of the tests' EHR (tests/support/fhir_receiver.py)
FHIR_JS_VERSION=4.12.0
FHIR_JS_DIR="${REPO}/.cache/npm"
if grep -qs "\"version\": \"${FHIR_JS_VERSION}\"" "${FHIR_JS_DIR}/node_modules/fhir/package.json"; then
    step "npm fhir ${FHIR_JS_VERSION}: cached in ${FHIR_JS_DIR}"
else
    step "npm install fhir@${FHIR_JS_VERSION} -> ${FHIR_JS_DIR}"
    mkdir -p "${FHIR_JS_DIR}"
    (cd "${FHIR_JS_DIR}" && npm install --silent --no-audit --no-fund --no-save "fhir@${FHIR_JS_VERSION}" >/dev/null)
fi

# 3c. The tests' identity provider, oidc-provider from the npm registry (cached: nothing fetched when installed) -
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

# 4. This project, editable, with the test extra ----------------------------------------------------------------
# Up to date when the editable install points at this checkout and every dependency, the test extra included,
# is installed at a satisfying version, with the console scripts of pyproject.toml. (Run from /: the build's
# dicom_ai_node.egg-info in the checkout would otherwise shadow the installed metadata.)
if (cd / && "${PYTHON}" - "${REPO}") <<'EOF' 2>/dev/null
import json, sys, tomllib
from importlib import metadata
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

repo = Path(sys.argv[1]).resolve()
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
dist = metadata.distribution(project["name"])
direct = json.loads(dist.read_text("direct_url.json") or "{}")
assert direct.get("dir_info", {}).get("editable"), "not editable"
assert Path(direct["url"].removeprefix("file://")).resolve() == repo, "another checkout"
assert dist.version == project["version"], "version changed"
scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
assert scripts == project.get("scripts", {}), "console scripts changed"
for text in project["dependencies"] + project.get("optional-dependencies", {}).get("test", []):
    req = Requirement(text)
    if req.marker and not req.marker.evaluate():
        continue
    assert req.specifier.contains(metadata.version(req.name), prereleases=True), text
EOF
then
    step "pip: dicom-ai-node[test] already installed (editable, ${REPO})"
else
    pip_args=(install -e "${REPO}[test]")
    if "${PYTHON}" -c 'import sys, sysconfig, pathlib; sys.exit(not (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists())'; then
        pip_args+=(--break-system-packages)  # Debian's own python3 (PEP 668)
    fi
    step "pip ${pip_args[*]}"
    pip_args+=(--quiet)
    export PIP_ROOT_USER_ACTION=ignore
    if [[ -w "$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" ]]; then
        "${PYTHON}" -m pip "${pip_args[@]}"
    else
        as_root "${PYTHON}" -m pip "${pip_args[@]}"
    fi
fi
step "done"
