#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests (real storescu, Orthanc...) included, after scripts/setup_tests.sh.
# Extra arguments go to pytest: scripts/test.sh -x -k orthanc
#
# Two passes, each in parallel (pytest-xdist, DICOM_NODE_TEST_WORKERS processes, default 4: the tests mostly wait on
# timers and peers, so more workers than the 2 cores of CI pay) and then the `serial` tests alone, each test under a
# timeout (pytest-timeout: the default in pyproject.toml, longer ones marked), each printing its 25 slowest tests:
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

# A pass is two runs of pytest: the tests in parallel (-n WORKERS --dist loadgroup: any test to any free worker,
# those of one xdist_group, tests/conftest.py GROUPED_MODULES, to one), then the `serial` ones (a wall-clock bound:
# fail-over time, latency, benchmark ratios) one at a time. Each prints its 25 slowest tests.
# A -m in "$@" replaces the pass's selection (it comes later): then the pass is one parallel run of that selection.
run_pass() {
    local label="$1" select="$2"; shift 2
    local runs=() arg prc=0 started=${SECONDS}
    for arg in "$@"; do [[ "${arg}" == -m* ]] && runs=(all); done
    if [[ ${#runs[@]} -eq 0 ]]; then runs=(parallel serial); fi
    for run in "${runs[@]}"; do
        local args=()
        case "${run}" in
            all) args=(-n "${WORKERS}" --dist loadgroup -m "${select}") ;;
            parallel) args=(-n "${WORKERS}" --dist loadgroup -m "${select:+(${select}) and }not serial") ;;
            serial) args=(-n 0 -m "${select:+(${select}) and }serial") ;;
        esac
        echo "[test] ${label}, ${run}: ${PYTHON} -m pytest ${args[*]} --durations=25 $*"
        local rrc=0
        "${PYTHON}" -m pytest "${args[@]}" --durations=25 "$@" || rrc=$?
        if [[ ${rrc} -eq 5 && "${run}" == serial ]]; then
            rrc=0  # the selection holds no serial test (e.g. -k): nothing to run alone
        elif [[ ${rrc} -eq 5 ]]; then
            echo "[test] FAILED (${label}, ${run}): pytest collected no tests (exit 5)" >&2
        elif [[ ${rrc} -ne 0 ]]; then
            echo "[test] FAILED (${label}, ${run}): pytest exit ${rrc}" >&2
        fi
        [[ ${prc} -ne 0 ]] || prc=${rrc}
    done
    echo "[test] ${label}: $((SECONDS - started)) s"
    return "${prc}"
}

rc=0
passes="${DICOM_NODE_TEST_PASSES:-both}"
if [[ -n "${DICOM_NODE_TEST_DATABASE:-}" ]]; then
    run_pass "database ${DICOM_NODE_TEST_DATABASE}" "" "$@" || rc=$?
    exit "${rc}"
fi
if [[ "${passes}" != postgresql ]]; then
    run_pass "SQLite" "" "$@" || rc=$?
fi
if [[ "${passes}" != sqlite ]]; then
    prc=0
    DICOM_NODE_TEST_DATABASE=postgresql run_pass "PostgreSQL" "engine and not sqlite" "$@" || prc=$?
    [[ ${rc} -ne 0 ]] || rc=${prc}
fi
exit "${rc}"
