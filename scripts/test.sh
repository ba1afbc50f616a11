#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests (real storescu, Orthanc) included, after scripts/setup.sh.
# Extra arguments go to pytest: scripts/test.sh -x -k orthanc
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "${REPO}"

bash scripts/setup.sh

# -m "": no marker filter, whatever addopts may say; a -m in "$@" still wins (it comes later).
echo "[test] ${PYTHON} -m pytest -m '' $*"
rc=0
"${PYTHON}" -m pytest -m "" "$@" || rc=$?
if [[ ${rc} -eq 5 ]]; then
    echo "[test] FAILED: pytest collected no tests (exit 5)" >&2
fi
exit "${rc}"
