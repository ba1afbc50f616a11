#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests (real storescu, Orthanc...) included, after scripts/setup_tests.sh.
# Extra arguments go to pytest: scripts/test.sh -x -k orthanc
#
# Two passes, each in parallel (pytest-xdist, DICOM_NODE_TEST_WORKERS processes, default 4: the tests mostly wait on
# timers and peers, so more workers than the 2 cores of CI pay), each test under a timeout (pytest-timeout: the
# default in pyproject.toml, longer ones marked), each printing its 25 slowest tests:
#   1. SQLite: every test, on the node's default database;
#   2. PostgreSQL: the tests whose outcome can depend on the database engine (marker `engine`; tests/conftest.py
#      says which and why, and fails a test that opens the node's database without it), every database they make
#      on a PostgreSQL server the session starts (DICOM_NODE_TEST_DATABASE=postgresql, see tests/support/testdb.py).
# DICOM_NODE_TEST_PASSES=sqlite or postgresql: that pass only. DICOM_NODE_TEST_DATABASE already set: one pass, every
# test, on that database. DICOM_NODE_SKIP_SETUP=1: do not run scripts/setup_tests.sh (the peers are installed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORKERS="${DICOM_NODE_TEST_WORKERS:-4}"
cd "${REPO}"

if [[ "${DICOM_NODE_SKIP_SETUP:-}" != 1 ]]; then
    PYTHON="${PYTHON}" bash scripts/setup_tests.sh
fi

# -m "": no marker filter, whatever addopts may say; a -m in "$@" still wins (it comes later). Same for -n.
# --dist loadgroup: tests go to any free worker, those of one xdist_group (tests/conftest.py GROUPED_MODULES) to one.
run_pass() {
    local label="$1"; shift
    local args=(-n "${WORKERS}" --dist loadgroup --durations=25 "$@")
    echo "[test] ${label}: ${PYTHON} -m pytest ${args[*]}"
    local prc=0 started=${SECONDS}
    "${PYTHON}" -m pytest "${args[@]}" || prc=$?
    echo "[test] ${label}: $((SECONDS - started)) s"
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
    DICOM_NODE_TEST_DATABASE=postgresql run_pass "PostgreSQL" -m "engine and not sqlite" "$@" || prc=$?
    [[ ${rc} -ne 0 ]] || rc=${prc}
fi
exit "${rc}"
