#!/usr/bin/env bash
# What the node itself needs, idempotently (fast when everything is already there): Python 3 with pip, and this
# project installed editable. scripts/demo.sh runs only this; scripts/setup_tests.sh runs it with the test extra.
#
#   EXTRAS=test   install the package with these pip extras (pyproject.toml [project.optional-dependencies])
#   PYTHON=...    the interpreter (default python3)
#
# Run as root, or as a user with sudo (only when python3 or pip must come from apt).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-}"
# shellcheck source=scripts/setup_common.sh
source "${REPO}/scripts/setup_common.sh"

# 1. Python and pip, from Debian when missing --------------------------------------------------------------------
missing=()
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    missing+=(python3 python3-pip python3-venv)
elif ! "${PYTHON}" -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi
apt_install "${missing[@]}"

# 2. This project, editable, with the extras asked for -----------------------------------------------------------
# Up to date when the editable install points at this checkout and every dependency (the extras' included) is
# installed at a satisfying version, with the console scripts of pyproject.toml. (Run from /: the build's
# dicom_ai_node.egg-info in the checkout would otherwise shadow the installed metadata.)
if (cd / && "${PYTHON}" - "${REPO}" "${EXTRAS}") <<'PY' 2>/dev/null
import json, sys, tomllib
from importlib import metadata
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

repo = Path(sys.argv[1]).resolve()
extras = [e for e in sys.argv[2].split(",") if e]
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
dist = metadata.distribution(project["name"])
direct = json.loads(dist.read_text("direct_url.json") or "{}")
assert direct.get("dir_info", {}).get("editable"), "not editable"
assert Path(direct["url"].removeprefix("file://")).resolve() == repo, "another checkout"
assert dist.version == project["version"], "version changed"
scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
assert scripts == project.get("scripts", {}), "console scripts changed"
wanted = list(project["dependencies"])
for extra in extras:
    wanted += project.get("optional-dependencies", {})[extra]
for text in wanted:
    req = Requirement(text)
    if req.marker and not req.marker.evaluate():
        continue
    assert req.specifier.contains(metadata.version(req.name), prereleases=True), text
PY
then
    step "pip: dicom-ai-node${EXTRAS:+[${EXTRAS}]} already installed (editable, ${REPO})"
else
    target="${REPO}${EXTRAS:+[${EXTRAS}]}"
    pip_args=(install -e "${target}")
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
step "runtime done"
