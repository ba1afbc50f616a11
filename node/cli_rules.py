"""`dicom-node rules test`, `dicom-node retract` and `dicom-node rerun` (registered by :mod:`node.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.config import ConfigError, NodeConfig, load_config


def _load(path: str) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _address(d: dict[str, Any]) -> str:
    """Where a destination is, by its kind."""
    if d.get("type") == "hl7v2":
        return f"ORU^R01 to {d['host']}:{d['port']}"
    if d.get("type") in ("fhir", "dicomweb"):
        return f"{'FHIR' if d['type'] == 'fhir' else 'STOW-RS'} {d['url']}"
    return f"{d['ae_title']}@{d['host']}:{d['port']}"


def print_rule_test(report: dict[str, Any]) -> None:
    """The rule tester's report as text: per study, per series, per rule; then the jobs."""
    out = print
    for refused in report["refused"]:
        out(f"refused: {refused['path']}: {refused['reason']}")
    if not report["studies"]:
        out("no study found")
    for study in report["studies"]:
        out(f"\nstudy {study['study_uid']} ({len(study['series'])} series)")
        for s in study["series"]:
            out(f"  series {s['series_uid']}  #{s['series_number'] or '-'} {s['modality'] or '-'} "
                f"{s['body_part'] or ''} {s['description'] or ''}  ({s['instances']} instances)")
            for r in s["rules"]:
                if r["matches"] is True:
                    out(f"    rule {r['rule']}: MATCHES ({r['matching_instances']} instance(s))")
                elif r["matches"]:
                    out(f"    rule {r['rule']}: {r['matches']} {_fmt(r['classified'])}")
                else:
                    why = "; ".join(f"{f['key']} is {f['found']!r}, rule wants {_fmt(f['expected'])}"
                                    f" ({f['instances']} instance(s))" for f in r["failed"])
                    out(f"    rule {r['rule']}: no match: {why}")
        done = study.get("completion")
        if done:
            out(f"  completion: {done['would_fire']}")
            for line in done["triggers"]:
                out(f"    {line}")
            if done.get("warning"):
                out(f"    WARNING: {done['warning']}")
        if not study["jobs"]:
            out("  jobs: none (no rule matched)")
        for job in study["jobs"]:
            out(f"  job {job['rule']} -> endpoint {job['endpoint']} ({job.get('model', '?')}): "
                f"{job['instances']} instance(s) of {len(job['series'])} series")
            for key in ("waits_for", "outcome", "burned_in"):
                if job.get(key):
                    out(f"    {key.replace('_', ' ')}: {job[key]}")
            if "params" in job:
                out(f"    params: {_fmt(job['params'])}")
            for key, value in (job.get("selection") or {}).items():
                if value in (None, [], {}, ""):
                    continue
                if isinstance(value, dict):
                    out(f"    {key}:")
                    for k, v in value.items():
                        out(f"      {k}: {v}")
                elif isinstance(value, list):
                    out(f"    {key}: {len(value)}")
                    for v in value:
                        out(f"      {v if not isinstance(v, dict) else ', '.join(f'{a} {b}' for a, b in v.items())}")
                else:
                    out(f"    {key}: {value}")
            if job.get("results"):
                out(f"    results: {job['results']}")
            where = ", ".join(d.get("problem") and f"{d['destination']} ({d['problem']})"
                              or f"{d['destination']} ({_address(d)}{', TLS' if d['tls'] else ''})"
                              for d in job["send_to"]) or "nowhere"
            out(f"    would send to: {where}")
    out(f"\nsent: {report['sent']}")


def _order_lookup(cfg: NodeConfig) -> Any:
    """The node's stored HL7 orders by accession number (read only), or None when the node has no database yet."""
    from sqlalchemy import create_engine

    from node.store.hl7 import HospitalItPart

    url = cfg.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None
    reader = HospitalItPart()
    reader.engine = create_engine(url)
    def lookup(accession: str) -> Any:
        try:
            return reader.order_for_accession(accession)
        except Exception:  # noqa: BLE001 - a database without the orders table (older node): no order
            return None
    return lookup


def cmd_rules_test(args: argparse.Namespace) -> int:
    """`dicom-node rules test --config F PATH...`: which rules match, which jobs would run; nothing is sent."""
    from node.flow.ruletest import run_rule_test

    cfg = _load(args.config)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = run_rule_test(cfg, [Path(p) for p in args.paths], orders=_order_lookup(cfg))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_rule_test(report)
    return 0


def cmd_retract(args: argparse.Namespace) -> int:
    """`dicom-node retract --config F --study UID [--rule R] --reason R`: send an IOCM rejection note (KOS)."""
    from node.flow.queue import Queue
    from node.flow.retract import RetractError, retract
    from node.store.state import Store

    cfg = _load(args.config)
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    from node.cli_audit import record_action

    try:
        report = retract(cfg, store, Queue(cfg), args.study, rule=args.rule, reason=args.reason)
    except RetractError as exc:
        record_action(cfg, "retract", "minor-failure", study_uid=args.study, rule=args.rule, reason=args.reason,
                      error=str(exc))
        print(f"retract: {exc}", file=sys.stderr)
        return 1
    record_action(cfg, "retract", study_uid=args.study, rule=args.rule, reason=args.reason)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """`dicom-node rerun --config F --study UID [--rule R]`: run the study's jobs again (new results replace old)."""
    from node.flow.queue import Queue
    from node.flow.retract import RetractError, rerun
    from node.store.state import Store

    cfg = _load(args.config)
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    from node.cli_audit import record_action

    try:
        report = rerun(cfg, store, Queue(cfg), args.study, rule=args.rule)
    except RetractError as exc:
        record_action(cfg, "rerun", "minor-failure", study_uid=args.study, rule=args.rule, error=str(exc))
        print(f"rerun: {exc}", file=sys.stderr)
        return 1
    record_action(cfg, "rerun", study_uid=args.study, rule=args.rule)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
    return 0


#: ``--reason`` of ``retract`` (the keys of :data:`dicom_out.kos.REJECTION_TITLES`, checked by a test). Spelled out
#: here so that building the parser imports nothing: ``serve`` must set up the metrics folder before any module
#: that records metrics (prometheus_client) is imported.
REASON_CHOICES = ("incorrect-worklist", "quality", "safety")


def add_parsers(sub: Any) -> None:
    """Register `rules test`, `retract` and `rerun` on the `dicom-node` sub-parsers."""
    rules = sub.add_parser("rules", help="try the routing rules on DICOM files (nothing is sent)")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    s = rules_sub.add_parser("test", help="which rules match which series, the jobs and images they would get")
    s.add_argument("--config", required=True)
    s.add_argument("--json", action="store_true")
    s.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (read recursively)")
    s.set_defaults(func=cmd_rules_test)

    s = sub.add_parser("retract", help="reject the node's results of a study at every destination (IOCM KOS)")
    s.add_argument("--config", required=True)
    s.add_argument("--study", required=True, help="Study Instance UID")
    s.add_argument("--rule", default=None, help="only the results of this rule")
    s.add_argument("--reason", required=True, choices=REASON_CHOICES)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_retract)

    s = sub.add_parser("rerun", help="run a study's jobs again; new results name the ones they replace")
    s.add_argument("--config", required=True)
    s.add_argument("--study", required=True, help="Study Instance UID")
    s.add_argument("--rule", default=None, help="only this rule")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rerun)


