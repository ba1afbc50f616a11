#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests (real storescu, Orthanc) included, after scripts/setup.sh.
# Extra arguments go to pytest: scripts/test.sh -x -k orthanc
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "${REPO}"

bash scripts/setup.sh

# -m "": no marker filter, whatever addopts may say; a -m in "$@" still wins (it comes later).
# Two passes: the node's default SQLite database, then the same suite with every test database on PostgreSQL
# (DICOM_NODE_TEST_DATABASE=postgresql: the tests start their own server on a free loopback port; see
# tests/support/testdb.py). The second pass leaves out the tests marked nodb (converters, writers, harnesses: no
# database to change). DICOM_NODE_TEST_DATABASE already set: one pass, on that. DICOM_NODE_TEST_PASSES=sqlite or
# postgresql: that pass only.
run_pass() {
    local label="$1"; shift
    echo "[test] ${label}: ${PYTHON} -m pytest $*"
    local prc=0
    "${PYTHON}" -m pytest "$@" || prc=$?
    if [[ ${prc} -eq 5 ]]; then
        echo "[test] FAILED (${label}): pytest collected no tests (exit 5)" >&2
    elif [[ ${prc} -ne 0 ]]; then
        echo "[test] FAILED (${label}): pytest exit ${prc}" >&2
    fi
    return "${prc}"
}

rc=0
passes="${DICOM_NODE_TEST_PASSES:-both}"
if [[ -n "${DICOM_NODE_TEST_DATABASE:-}" ]]; then
    run_pass "database ${DICOM_NODE_TEST_DATABASE}" -m "" "$@" || rc=$?
    exit "${rc}"
fi
if [[ "${passes}" != postgresql ]]; then
    run_pass "SQLite" -m "" "$@" || rc=$?
fi
if [[ "${passes}" != sqlite ]]; then
    prc=0
    DICOM_NODE_TEST_DATABASE=postgresql run_pass "PostgreSQL" -m "not nodb" "$@" || prc=$?
    [[ ${rc} -ne 0 ]] || rc=${prc}
fi
exit "${rc}"
