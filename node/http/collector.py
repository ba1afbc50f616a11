"""Gauges that are state, read from the database and the spool at scrape time (never counted in a process).

A custom prometheus_client collector: outbox depth and the age of its oldest row per destination, parked results
per destination, failed jobs per rule, studies per state, free disk on the spool, queue lag (how late the most
overdue pending job or send is) and tasks waiting in the queue.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select

from node.audit.status import metric_families as audit_metrics
from node.http.context import HttpContext, worker_alive
from node.store.schema import jobs, outbox, studies

log = logging.getLogger(__name__)


class StateCollector(Collector):
    """Reads the node's state on every scrape."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        t = time.time()
        depth = GaugeMetricFamily("dicom_node_outbox_depth", "Results waiting to be sent, per destination",
                                  labels=["destination"])
        oldest = GaugeMetricFamily("dicom_node_outbox_oldest_age_seconds",
                                   "Age of the oldest result waiting to be sent, per destination", labels=["destination"])
        parked = GaugeMetricFamily("dicom_node_parked_results", "Results parked (not delivered; `retry` resends)",
                                   labels=["destination"])
        failed = GaugeMetricFamily("dicom_node_failed_jobs", "Jobs in state failed, per rule", labels=["rule"])
        states = GaugeMetricFamily("dicom_node_studies", "Studies held, per state", labels=["state"])
        lag = GaugeMetricFamily("dicom_node_queue_lag_seconds",
                                "How long the most overdue pending job or send has been due and not taken")
        with self.ctx.store.engine.connect() as conn:
            for dest, n, first in conn.execute(
                    select(outbox.c.destination, func.count(), func.min(outbox.c.created_at))
                    .where(outbox.c.state == "pending").group_by(outbox.c.destination)):
                depth.add_metric([dest], n)
                oldest.add_metric([dest], max(0.0, t - float(first)))
            for dest in self.ctx.cfg.destinations:  # a configured destination with nothing waiting reads 0
                if dest not in {s.labels["destination"] for s in depth.samples}:
                    depth.add_metric([dest], 0)
                    oldest.add_metric([dest], 0)
            parked_by = dict(conn.execute(select(outbox.c.destination, func.count())
                                          .where(outbox.c.state == "parked").group_by(outbox.c.destination)).all())
            for dest in sorted(set(parked_by) | set(self.ctx.cfg.destinations)):
                parked.add_metric([dest], parked_by.get(dest, 0))
            for rule, n in conn.execute(select(jobs.c.rule_name, func.count())
                                        .where(jobs.c.state == "failed").group_by(jobs.c.rule_name)):
                failed.add_metric([rule], n)
            for state, n in conn.execute(select(studies.c.state, func.count()).group_by(studies.c.state)):
                states.add_metric([state], n)
            due = []
            for table in (jobs, outbox):
                due.append(conn.execute(select(func.min(table.c.next_attempt_at)).where(and_(
                    table.c.state == "pending", table.c.next_attempt_at <= t,
                    or_(table.c.lease_until.is_(None), table.c.lease_until < t)))).scalar())
            overdue = [t - float(d) for d in due if d is not None]
            lag.add_metric([], max(overdue, default=0.0))
        yield from (depth, oldest, parked, failed, states, lag)
        try:
            free = self.ctx.spool.free_bytes()
            yield GaugeMetricFamily("dicom_node_spool_free_bytes", "Free bytes on the spool's filesystem", value=free)
        except OSError:
            log.warning("cannot read the spool's free space")
        try:
            yield GaugeMetricFamily("dicom_node_queue_tasks", "Tasks waiting in the work queue",
                                    value=self.ctx.huey.pending_count())
        except Exception:  # an unreachable queue is reported by /readyz; the scrape still answers
            log.warning("cannot read the queue's pending count")
        alive, _ = worker_alive(self.ctx.cfg.node_dir)
        yield GaugeMetricFamily("dicom_node_worker_up", "1 when the worker process is running", value=int(alive))
        yield from audit_metrics(self.ctx.cfg)  # the ATNA backlog (audit.syslog), from the forwarder's status file
