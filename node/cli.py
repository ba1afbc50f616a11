"""The ``dicom-node`` command line: serve, emulator, check-config, status, retry, demo (rules test, retract, rerun:
:mod:`node.cli_rules`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from node.config import ConfigError, NodeConfig, load_config


def _load(path: str) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    """`dicom-node check-config F`: validate the file (and its TLS files); exit 2 naming the key on an error."""
    cfg = _load(args.file)
    tls_lines = _check_tls(cfg)
    print(f"{args.file}: OK")
    print(f"  node {cfg.node.ae_title} on {cfg.node.host}:{cfg.node.port}, storage {cfg.storage_dir}")
    for name, ep in cfg.endpoints.items():
        where = ep.url or f"workspace {ep.workspace} / endpoint {ep.endpoint_name}"
        print(f"  endpoint {name}: {ep.model} at {where} (auth {ep.auth})")
    for name, d in cfg.destinations.items():
        how = {"dicomweb": f"STOW-RS {d.url}", "fhir": f"FHIR {d.url}", "hl7v2": f"HL7 v2 MLLP {d.host}:{d.port}"}
        print(f"  destination {name}: " + how.get(d.type, f"{d.ae_title}@{d.host}:{d.port}"))
    for r in cfg.rules:
        print(f"  rule {r.name}: {r.match} -> {r.endpoint} -> {r.send_to}")
    if cfg.priors is not None:
        p = cfg.priors
        print(f"  priors: {'on' if p.enabled else 'off'}, {p.method} from {p.query}, {p.lookback_days} days back, "
              f"timeout {p.timeout_seconds:g} s")
    for line in tls_lines:
        print(f"  {line}")
    if cfg.audit.syslog is not None:
        print(f"  {_check_audit_repository(cfg)}")
    return 0


def _check_audit_repository(cfg: NodeConfig) -> str:
    from node.audit.transport import describe

    try:
        return describe(cfg.audit.syslog)
    except ConfigError as exc:
        print(f"configuration error:\n{cfg.source_path}: {str(exc).replace('destination tls', 'audit.syslog')}",
              file=sys.stderr)
        raise SystemExit(2) from None


def _check_tls(cfg: NodeConfig) -> list[str]:
    from node.dicom.tls import check_tls_files
    from node.http.checks import check_http_auth

    try:
        return check_tls_files(cfg) + check_http_auth(cfg)
    except ConfigError as exc:
        print(f"configuration error:\n{cfg.source_path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """`dicom-node serve --config F`: the SCP, receivers and worker until SIGTERM/SIGINT."""
    from node.ops import metricsdir

    cfg = _load(args.config)
    _check_tls(cfg)  # certificate, key and CA files load before anything listens
    metricsdir.prepare(cfg.node_dir)  # before prometheus_client is imported here or in any child
    from node.serve import serve

    return serve(cfg)


def cmd_worker(args: argparse.Namespace) -> int:
    """`dicom-node worker --config F`: the worker process alone (started by serve)."""
    from node.ops.process import setup_logging
    from node.flow.worker import run_worker

    cfg = _load(args.config)
    setup_logging(cfg.log_level, cfg.logging.format)
    run_worker(cfg, parent_pid=args.parent_pid)
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    """`dicom-node http --config F`: the HTTP side alone (started by serve when http.port is set)."""
    from node.ops.process import setup_logging
    from node.http.server import run_http

    cfg = _load(args.config)
    setup_logging(cfg.log_level, cfg.logging.format)
    return run_http(cfg, parent_pid=args.parent_pid)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """`dicom-node healthcheck --config F`: exit 0 when the node is ready (the Dockerfile's HEALTHCHECK)."""
    from node.http.probe import healthcheck

    return healthcheck(_load(args.config))


def cmd_receiver(args: argparse.Namespace) -> int:
    """`dicom-node receiver ...`: one more Storage SCP on the shared port (started by serve when node.receivers > 1)."""
    from node.ops.process import setup_logging
    from node.serve import run_receiver

    cfg = _load(args.config)
    setup_logging(cfg.log_level, cfg.logging.format)
    return run_receiver(cfg, args.index, args.parent_pid, args.rearm_timers, args.ready_fd)


def cmd_emulator(args: argparse.Namespace) -> int:
    """`dicom-node emulator`: the endpoint emulator on its own, until interrupted."""
    import os

    from node.emulator.server import serve_forever
    from node.emulator.variants import check_variants
    from node.ops.process import setup_logging

    try:
        check_variants(args.variant)
    except ValueError as exc:
        print(f"--variant: {exc}", file=sys.stderr)
        return 2
    setup_logging("INFO")
    key = os.environ.get(args.key_env) if args.key_env else None
    if args.key_env and not key:
        print(f"environment variable {args.key_env} is not set", file=sys.stderr)
        return 2
    serve_forever(args.host, args.port, key, variants=args.variant, max_input_pixels=args.max_input_pixels)
    return 0


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_status(args: argparse.Namespace) -> int:
    """`dicom-node status --config F`: studies, jobs, outbox, parked results and quarantine (or --json)."""
    from node.store.state import Store

    cfg = _load(args.config)
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    s = store.summary(limit=args.limit)
    from node.store.sources import all_sources

    s["sources"] = all_sources(store.engine)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(f"studies: {s['studies'] or 'none'}")
    print(f"jobs:    {s['jobs'] or 'none'}")
    print(f"outbox:  {s['outbox'] or 'none'}")
    print(f"quarantined instances: {s['quarantined']}")
    from node.audit.status import status_lines

    for line in status_lines(cfg):  # the audit repository (audit.syslog): backlog, ALERT
        print(("\n" if line.startswith("ALERT") else "") + line)
    if s["parked"]:
        print("\nALERT: results parked (not delivered; `dicom-node retry` sends them again):")
        for r in s["parked"]:
            print(f"  {r['result_uid']} -> {r['destination']}: {r['last_status']} {r['error']}")
    if s.get("parked_jobs"):
        print("\nALERT: jobs parked (their endpoint failed past give_up_after_seconds; `dicom-node retry --jobs` "
              "runs them again):")
        for r in s["parked_jobs"]:
            print(f"  #{r['id']} {r['rule_name']} study {r['study_uid']} -> {r['endpoint']}: {r['outcome'] or ''}")
    if s.get("circuits"):
        print("\nendpoints unavailable (their jobs wait; one probe at a time):")
        for r in s["circuits"]:
            print(f"  {r['endpoint']}: {r['state']} since {_fmt_time(r['opened_at'])}, {r['failures']} failure(s), "
                  f"next probe {_fmt_time(r['retry_at'])}: {r['reason'] or ''}")
    if s["pending_outbox"]:
        print("\noutbox, waiting to be sent:")
        for r in s["pending_outbox"]:
            print(f"  {r['result_uid']} -> {r['destination']}: attempts {r['attempts']}, next "
                  f"{_fmt_time(r['next_attempt_at'])}, last {r['last_status'] or '-'} {r['error'] or ''}")
    if s["recent_studies"]:
        print("\nstudies:")
        for r in s["recent_studies"]:
            print(f"  {r['study_uid']}  {r['state']:<9} v{r['version']}  last instance {_fmt_time(r['last_received_at'])}"
                  f"{'  ' + r['note'] if r['note'] else ''}")
    if s["recent_jobs"]:
        print("\njobs:")
        for r in s["recent_jobs"]:
            print(f"  #{r['id']} {r['rule_name']} study {r['study_uid']} v{r['study_version']}: {r['state']} "
                  f"(attempts {r['attempts']}) {r['outcome'] or ''}")
    if s["sources"]:
        print("\nsources (change feeds):")
        for r in s["sources"]:
            health = (f"FAILING ({r['failures']} polls): {r['last_error']}; next poll {_fmt_time(r['next_poll_at'])}"
                      if r["failures"] else "ok")
            print(f"  {r['source']}: offset {r['feed_offset']} (sequence {r['last_sequence']}), "
                  f"{r['ingested']} instances ingested, {health}")
    if s.get("priors"):
        print("\nprior lookups:")
        for r in s["priors"]:
            took = f"{r['seconds']:.2f} s" if r["seconds"] is not None else "in progress"
            print(f"  study {r['for_study_uid']}: {r['state']} ({took}) {r['outcome'] or ''}")
    if s["quarantine"]:
        print("\nquarantine:")
        for r in s["quarantine"]:
            print(f"  {r['path']}: {r['reason']}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """`dicom-node retry --config F`: put parked results back in the outbox and wake their deliveries;
    with ``--jobs`` (``--study``, ``--rule``, ``--failed``): run parked (or failed) jobs again."""
    from node.flow.queue import Queue
    from node.store.state import Store

    cfg = _load(args.config)
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    queue = Queue(cfg)
    from node.cli_audit import record_action

    if args.jobs:
        rows = store.retry_jobs(study_uid=args.study, rule_name=args.rule, include_failed=args.failed)
        store.circuit_probe_now({r["endpoint"] for r in rows})  # an operator's retry tries the endpoint now
        for r in rows:
            queue.enqueue_job(r["id"])
        for study in sorted({r["study_uid"] for r in rows}):  # one audit event per study, with who did it
            record_action(cfg, "retry", study_uid=study, rule=args.rule,
                          jobs=[r["id"] for r in rows if r["study_uid"] == study])
        print(f"{len(rows)} job(s) queued again")
        return 0
    if args.study or args.rule or args.failed:
        print("--study, --rule and --failed select jobs: add --jobs", file=sys.stderr)
        return 2
    n = store.retry_parked(args.destination)
    for dest in {d for d, _ in store.due_destinations()}:
        queue.enqueue_delivery(dest)
    record_action(cfg, "retry", destination=args.destination or "all", results=n)
    print(f"{n} parked result(s) queued again")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`dicom-node demo`: emulator, node and a small PACS on this machine, with the shipped chest X-ray study."""
    from node.emulator.demo import run_demo

    return run_demo(Path(args.out), keep_running=args.keep_running)


def cmd_similar(args: argparse.Namespace) -> int:
    """`dicom-node similar --config F ...`: the stored images nearest to one (node/models/medimageinsight)."""
    from node.models.medimageinsight.similar_cli import cmd_similar as run

    return run(args, _load(args.config))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `dicom-node` command."""
    p = argparse.ArgumentParser(prog="dicom-node", description="DICOM AI integration node")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the node (SCP, workers, outbox)")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("worker", help=argparse.SUPPRESS)
    s.add_argument("--config", required=True)
    s.add_argument("--parent-pid", type=int, default=None)
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("healthcheck", help="exit 0 when the node is ready (/readyz, or a C-ECHO without http)")
    s.add_argument("--config", required=True)
    s.set_defaults(func=cmd_healthcheck)

    s = sub.add_parser("http", help=argparse.SUPPRESS)  # started by serve when http.port is set
    s.add_argument("--config", required=True)
    s.add_argument("--parent-pid", type=int, default=None)
    s.set_defaults(func=cmd_http)

    s = sub.add_parser("receiver", help=argparse.SUPPRESS)  # node.receivers > 1: started by serve only
    s.add_argument("--config", required=True)
    s.add_argument("--parent-pid", type=int, required=True)
    s.add_argument("--index", type=int, required=True)
    s.add_argument("--rearm-timers", action="store_true")
    s.add_argument("--ready-fd", type=int, help="pipe to write one byte to once listening")
    s.set_defaults(func=cmd_receiver)

    s = sub.add_parser("emulator", help="run the local endpoint emulator (answers marked as emulated)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--key-env", default=None, help="require Authorization: Bearer <value of this variable>")
    s.add_argument("--variant", action="append", default=[], metavar="NAME",
                   help="answer as a real deployment variant does (repeatable): see node/emulator/variants.py")
    s.add_argument("--max-input-pixels", type=int, default=None, help="refuse larger images/volumes (424, 413)")
    s.set_defaults(func=cmd_emulator)

    s = sub.add_parser("check-config", help="validate a configuration file")
    s.add_argument("file")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("status", help="studies, jobs, outbox and alerts")
    s.add_argument("--config", required=True)
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("retry", help="send parked results again (--jobs: run parked jobs again)")
    s.add_argument("--config", required=True)
    s.add_argument("--destination", default=None)
    s.add_argument("--jobs", action="store_true", help="run parked jobs again instead of sending parked results")
    s.add_argument("--study", default=None, help="with --jobs: only the jobs of this StudyInstanceUID")
    s.add_argument("--rule", default=None, help="with --jobs: only the jobs of this rule")
    s.add_argument("--failed", action="store_true", help="with --jobs: also jobs that failed for good")
    s.set_defaults(func=cmd_retry)

    s = sub.add_parser("demo", help="emulator + node + a small PACS; sends a sample chest X-ray study")
    s.add_argument("--out", default="./demo-out", help="folder for the results and the PNG of the boxes")
    s.add_argument("--keep-running", action="store_true")
    s.set_defaults(func=cmd_demo)

    from node.models.medimageinsight.similar_cli import add_parser as add_similar

    add_similar(sub)
    sub.choices["similar"].set_defaults(func=cmd_similar)

    from node.cli_rules import add_parsers as add_rules_retract

    add_rules_retract(sub)  # rules test, retract, rerun (node/cli_rules.py)
    from node.cli_audit import add_parsers as add_audit

    add_audit(sub)  # audit-forward, the ATNA forwarder serve starts (node/cli_audit.py)
    from node.cli_hl7 import add_parsers as add_hl7

    add_hl7(sub)  # mllp (node/cli_hl7.py)
    from node.cli_probe import add_parser as add_probe

    add_probe(sub)  # the go-live check of the endpoints (node/cli_probe.py)
    from node.cli_workflow import add_parsers as add_workflow

    add_workflow(sub)  # workitems: the AIW-I worklist's workitems (node/cli_workflow.py)
    from node.cli_monitoring import add_parsers as add_monitoring

    add_monitoring(sub)  # monitor (node/cli_monitoring.py)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dicom-node`: run the command named by ``argv``; returns the exit status."""
    # SIGINT, this node's stop signal, is never ignored here: node/__init__.py restored it before any import.
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
