"""Shared fixtures: where the real DICOM test data lives; the harnesses themselves are in ``support/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import testdb
from support.data import data_dir

# Property-based tests: the same examples on every run by default, so a landing gate cannot flake;
# HYPOTHESIS_PROFILE=explore draws new ones each run (how new bad inputs are looked for).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()


@pytest.fixture(autouse=True)
def _test_database(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """With ``DICOM_NODE_TEST_DATABASE`` set, a configuration without ``database.url`` gets a fresh PostgreSQL
    database per storage folder instead of ``<storage_dir>/node.db`` (see ``support/testdb.py``); nodes started as
    processes get the same URL written into their file by ``support.nodeproc.node_config``."""
    if not testdb.on_postgresql() or request.node.get_closest_marker("sqlite"):
        return
    from node.config import NodeConfig

    def database_url(self: NodeConfig) -> str:
        return self.database.url or testdb.database_url(self.storage_dir)

    monkeypatch.setattr(NodeConfig, "database_url", property(database_url))


#: Test modules that never open the node's database (converters, DICOM writers, the test harnesses themselves, the
#: setup script): marked ``nodb``.
NO_DATABASE_MODULES = frozenset({
    "test_cxr_views", "test_emulator", "test_gsps_writer", "test_invoke_client", "test_key_rotation", "test_kos",
    "test_netpoll", "test_orthanc_fixture", "test_parse_contract", "test_pynetdicom_patches",
    "test_receive_contexts", "test_sc_writer", "test_scu_status", "test_security_egress", "test_seg_writer", "test_sso_roles",
    "test_setup_script", "test_sr_writer", "test_support_pacs", "test_volume",
})

# ---- engine: the tests the PostgreSQL pass of scripts/test.sh runs (-m "engine and not sqlite") ---------------------
# The rule, mechanical: a test is `engine` when
#   (a) it opens the node's database in the test process: the node's store (Store, Services, Intake, an in-process
#       SCP, the HTTP app, migrations) or SQLAlchemy on the node's database. Checked at every run of the SQLite pass
#       (which runs every test): a test that makes a SQLAlchemy connection and is marked neither `engine` nor
#       `sqlite` fails in its teardown, naming this list (tests/support/marker_rules.py); or
#   (b) its subject is what the database guarantees between processes: several nodes or receivers on one database
#       (clusters, rolling upgrades, concurrent senders), or a node killed and restarted, where what resumes and
#       what is sent once rests on the database's transactions and leases.
# End-to-end tests that only run one node to check something else (a viewer, a converter, an endpoint's replies,
# TLS, bad input) are not `engine`: the node's queries they go through are the ones (a) and (b) run on both engines.
# Whole modules go in ENGINE_MODULES; in a module that also holds other tests, the test names go in ENGINE_TESTS.
# A new test module: put it here, or mark its tests `@pytest.mark.engine` yourself.
ENGINE_MODULES = frozenset({
    # (a) the store in the test process
    "test_commit", "test_http_app", "test_insight", "test_migrations", "test_outbox", "test_outbox_verify",
    "test_receive", "test_resilience", "test_retract_unsent", "test_rolling_upgrade_worker", "test_security_logging",
    "test_security_tls", "test_sso_tokens", "test_integration_audit", "test_integration_health",
    "test_integration_qr_get",
    # (b) what the database guarantees between processes
    "test_exactly_once", "test_faults_kill", "test_load", "test_receivers",
})
ENGINE_TESTS = frozenset({
    "test_dicomweb_changefeed.py::test_a_failing_source_backs_off_and_shows_in_status",
    "test_dicomweb_changefeed.py::test_new_instances_are_ingested_once_and_deletions_ignored",
    "test_dicomweb_priors.py::test_a_dicomweb_service_that_accepts_and_never_answers_costs_the_timeout_only",
    "test_dicomweb_priors.py::test_a_dicomweb_service_that_is_down_ends_well",
    "test_dicomweb_priors.py::test_priors_from_the_emulated_azure_dicom_service",
    "test_dicomweb_stow.py::test_partial_success_delivers_the_good_instance_and_parks_the_invalid_one",
    "test_dicomweb_stow.py::test_refused_credentials_and_missing_service_park",
    "test_dicomweb_stow.py::test_stow_to_the_azure_emulator_delivers_once_and_a_resend_is_already_stored",
    "test_dicomweb_stow.py::test_unavailable_service_is_retried_then_delivered",
    "test_dicomweb_stow_in.py::test_each_instance_is_stored_durably_and_listed",
    "test_dicomweb_stow_in.py::test_partial_failure_quarantines_the_bad_part_and_keeps_the_good_one",
    "test_dicomweb_stow_in.py::test_token_media_type_and_size_are_checked",
    "test_priors.py::test_a_pacs_that_accepts_and_then_stalls_a_query_costs_the_timeout_only",
    "test_priors.py::test_instances_of_an_expected_prior_are_kept_apart_and_purged",
    "test_priors.py::test_report_choice_and_the_configured_text_sources",
    "test_priors.py::test_the_latest_prior_without_a_frontal_gives_way_to_an_older_one",
    "test_dicomweb_priors.py::test_priors_from_orthanc_over_qido_and_wado",
    "test_dicomweb_stow.py::test_stow_to_orthanc_dicomweb_read_back_by_qido_and_wado",
    "test_atna_messages.py::test_a_patient_is_read_from_the_study_files_and_kept_past_the_purge",
    "test_atna_spool.py::test_a_forwarder_killed_anywhere_makes_every_message_once_in_order",
    "test_atna_spool.py::test_an_association_whose_receiver_died_is_sent_once_with_what_it_stored",
    "test_hospital_it_pages.py::test_a_report_shows_on_the_study_and_outbox_pages",
    "test_sso_store.py::test_sign_outs_are_kept_until_the_session_would_have_ended",
    "test_workflow_ups_inputs.py::test_inputs_come_by_c_get_and_by_c_move",
})

# own_engine: engine tests that name their databases themselves (their own PostgreSQL server: clusters, rolling
# upgrades; explicit sqlite:/// URLs; parameters over both engines). Every pass runs them on the engines they name, so
# the PostgreSQL pass, which would run them unchanged, leaves them out. Checked (support/marker_rules.py): one that
# uses the database the pass chooses (a node configuration without database.url) fails. ENGINE_TESTS wins over
# these lists (a test of such a module that follows the pass).
OWN_ENGINE_MODULES = frozenset({
    "test_cluster", "test_cluster_failover", "test_cluster_store", "test_rolling_upgrade", "test_store_concurrency",
    "test_migrations",
})
OWN_ENGINE_TESTS = frozenset({
})

# ---- slow: tests that start other programs ---------------------------------------------------------------------------
# The rule, mechanical: a test that starts another program (a node process, storescu, Orthanc, a browser, dciodvfy,
# PixelMed, PostgreSQL, a shell script, a multiprocessing worker) is `slow`; `pytest -m "not slow"` is the quick,
# in-process part of the suite. Checked at every run (support/marker_rules.py). Most modules say so in their own
# `pytestmark`; these are the ones marked from here (whole modules, or single tests of mixed modules).
SLOW_MODULES = frozenset({
    "test_gsps_writer", "test_kos", "test_parse_pipelines", "test_receive", "test_rule_tester", "test_sc_writer",
    "test_security_tls", "test_seg_writer", "test_sr_writer", "test_store_concurrency", "test_volume",
    "test_support_validate", "test_integration_fhir_auth",
})
SLOW_TESTS = frozenset({
    "test_architecture.py::test_the_command_line_imports_no_metrics_before_serve_sets_them_up",
    "test_cluster_compose.py::test_haproxy_accepts_the_compose_balancer_config",
    "test_insight.py::test_classification_sr_is_valid",
    "test_migrations.py::test_an_empty_postgresql_database_gets_the_tables_of_schema_py",
    "test_migrations.py::test_processes_opening_an_empty_database_at_once_all_find_head",
    "test_migrations.py::test_processes_opening_an_empty_postgresql_database_at_once_all_find_head",
    "test_priors.py::test_report_text_of_a_radiologist_sr_and_of_the_nodes_own_sr",
    "test_priors.py::test_the_latest_prior_without_a_frontal_gives_way_to_an_older_one",
    "test_security_logging.py::test_pydicom_value_warnings_do_not_quote_values_in_a_node_process",
    "test_security_logging.py::test_serve_logging_masks_the_endpoint_key_from_the_environment",
    "test_security_logging.py::test_storage_database_and_audit_files_are_owner_only",
    "test_spare_files.py::test_start_removes_this_nodes_spares_left_by_dead_processes_only",
    "test_atna_spool.py::test_an_association_whose_receiver_died_is_sent_once_with_what_it_stored",
    "test_atna_cli.py::test_check_config_loads_the_audit_repository_files_and_names_the_key",
    "test_atna_cli.py::test_command_line_write_actions_are_audited_with_the_os_user",
    "test_fhir_sender.py::test_each_result_kind_is_one_valid_transaction",
    "test_fhir_sender.py::test_http_answers_and_a_lost_answer",
    "test_fhir_sender.py::test_rerun_corrects_and_retract_withdraws",
    "test_fhir_sender.py::test_the_receiver_refuses_what_r4_refuses",
    "test_monitoring_extract.py::test_the_pipeline_builds_and_runs_with_no_network",
    "test_rules.py::test_dicom_node_check_config_passes_on_the_example",
})

# ---- per-test timeouts (pytest-timeout; the default is `timeout` in pyproject.toml) ---------------------------------
# A test that legitimately needs longer says so: @pytest.mark.timeout(SECONDS) in its file, or, for the modules
# other engineers own, here (test id without "tests/" and parameters, or a module's file name -> seconds). The
# figure: about five times the test's duration on a loaded 2-core machine running the suite in parallel.
LONG_TESTS: dict[str, int] = {
    "test_soak.py::test_short_soak_loses_nothing_and_duplicates_nothing": 900,
    "test_bench_smoke.py::test_bench_quick_runs_and_writes_rows": 900,
    "test_cluster_failover.py": 600,
    "test_viewer_ohif.py": 600,
    "test_badinput.py::test_good_study_is_served_while_the_bad_ones_arrive": 600,
}

# ---- serial: tests that assert a wall-clock bound ---------------------------------------------------------------------
# A fail-over time, a latency under the test's own load, a benchmark's ratios: on a machine busy with the other
# tests such a bound fails for reasons that are not the product's. scripts/test.sh runs them after the parallel
# part of each pass, one at a time (pytest -n 0 -m serial). Mark a new one @pytest.mark.serial.
SERIAL_MODULES = frozenset({"test_cluster_failover", "test_load", "test_bench_smoke"})

# ---- pytest-xdist: tests that must run in one worker ---------------------------------------------------------------
# scripts/test.sh runs `-n N --dist loadgroup`: every test goes to any free worker, except those of one xdist_group,
# which run in one worker, in order. Modules whose tests share a module-scoped fixture (an Orthanc, a node, a
# browser) are grouped by module here, so that fixture starts once; mark a new one `xdist_group("name")` yourself.
GROUPED_MODULES = frozenset({
    "test_badinput", "test_faults_endpoint", "test_faults_outage", "test_http_side", "test_parse_pipelines",
    "test_security_tls", "test_sr_writer", "test_store_concurrency", "test_viewer_ohif", "test_volume",
})


# The longest tests and groups start first, so that the run does not end waiting on one of them begun last (xdist
# hands out tests in collection order). Test ids or module file names; about 30 s or more on a loaded machine.
RUN_FIRST = (
    "test_bench_smoke.py", "test_soak.py", "test_viewer_ohif.py", "test_sr_writer.py", "test_badinput.py",
    "test_faults_pacs.py", "test_retract_rerun.py", "test_cluster_failover.py", "test_rolling_upgrade.py",
    "test_exactly_once.py", "test_faults_outage.py", "test_faults_endpoint.py", "test_http_side.py",
    "test_insight.py::test_classification_sr_is_valid", "test_dicomweb_changefeed.py", "test_load.py",
    "test_priors.py", "test_faults_kill.py", "test_cluster.py", "test_end_to_end_cxr.py",
)


def _run_first_rank(item: pytest.Item) -> int:
    test_id = item.nodeid.removeprefix("tests/").split("[", 1)[0]
    for rank, key in enumerate(RUN_FIRST):
        if test_id == key or test_id.split("::", 1)[0] == key:
            return rank
    return len(RUN_FIRST)


def _module_name(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = _module_name(item)
        test_id = item.nodeid.removeprefix("tests/")
        if module in NO_DATABASE_MODULES:
            item.add_marker(pytest.mark.nodb)
        name = test_id.split("[", 1)[0]
        if name in ENGINE_TESTS:
            item.add_marker(pytest.mark.engine)
        elif module in OWN_ENGINE_MODULES or name in OWN_ENGINE_TESTS:
            item.add_marker(pytest.mark.own_engine)
        elif module in ENGINE_MODULES:
            item.add_marker(pytest.mark.engine)
        if module in SLOW_MODULES or test_id.split("[", 1)[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if module in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        if module in GROUPED_MODULES and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module))
        seconds = LONG_TESTS.get(test_id.split("[", 1)[0], LONG_TESTS.get(test_id.split("::", 1)[0]))
        if seconds is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))
    items.sort(key=_run_first_rank)  # stable: the order within a module (and a group) stays


# The checks of the engine and slow rules (tests/support/marker_rules.py): its hooks, taken in by name.
from support.marker_rules import pytest_configure, pytest_runtest_makereport, pytest_runtest_setup  # noqa: E402,F401


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    testdb.finish()
