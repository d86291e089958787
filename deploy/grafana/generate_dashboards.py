"""Generate IOC's Grafana dashboards (``deploy/grafana/dashboards/*.json``): one per domain and one for the
platform, using only the metrics every IOC process exports (``shared/metrics.py``), and one for the data stores
(Kafka and PostgreSQL, from their exporters: deploy/prometheus, docs/operations.md "Monitoring").

The dashboards share their layout, so they are built here rather than edited by hand in six JSON files;
``tests/deploy`` checks the committed files equal this output and that every metric they query is exported.
Run ``python deploy/grafana/generate_dashboards.py`` (``--check``: exit 1 when stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
# The processors of each domain, as the services define them (deploy/k8s/generate_topics.py).
from generate_topics import processors

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "ioc-prometheus"}  # provisioning/datasources/prometheus.yml
RATE = "[$__rate_interval]"
DOMAINS = {
    "meter": "Electricity meters (AMI)",
    "traffic": "Traffic signals and detectors",
    "kiosk": "Public-service kiosks",
    "dossier": "One-stop-shop dossiers",
    "city": "City overview (all domains)",
}


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "id": len(self.panels) + 1,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x, self.row_height = 0, 0


def targets(queries: list[tuple[str, str]], instant: bool = False) -> list[dict]:
    return [
        {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "expr": expr,
            "legendFormat": legend,
            **({"instant": True, "range": False, "format": "table"} if instant else {}),
        }
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(
    title: str, queries: list[tuple[str, str]], unit: str = "short", description: str = ""
) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets(queries),
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(
    title: str, expr: str, unit: str = "short", description: str = "", thresholds: list | None = None
) -> dict:
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets([(expr, "")]),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
    }


def table(title: str, expr: str, description: str = "") -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets([(expr, "")], instant=True),
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
    }


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ioc"],
        "editable": False,
        "timezone": "Asia/Ho_Chi_Minh",
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "graphTooltip": 1,
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": layout.panels,
    }


def query_variable(name: str, label: str, query: str, multi: bool = False) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "sort": 1,
    }


def domain_dashboard(domain: str, title: str) -> dict:
    """KPIs of the domain (city value and per district), its ingest, its events and its processor."""
    kpi_re = f"{domain}\\\\..*"  # PromQL regex `meter\..*` inside a JSON/PromQL string
    names = sorted(p.name for p in processors() if p.domain == domain)
    consumers = "|".join(names) or f"{domain}-kpi"
    lay = Layout()
    lay.row("KPIs")
    lay.add(
        timeseries(
            "City-wide KPIs",
            [(f'max by (kpi) (ioc_kpi_value{{kpi=~"{kpi_re}", scope_level="city"}})', "{{kpi}}")],
            description="Latest value of each KPI for the whole city, as the city layer publishes it.",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "$kpi by district",
            [('max by (scope_code) (ioc_kpi_value{kpi="$kpi", scope_level="district"})', "{{scope_code}}")],
        ),
        w=12,
    )
    lay.add(
        table("Latest $kpi per area", 'max by (scope_level, scope_code) (ioc_kpi_value{kpi="$kpi"})'),
        w=24,
        h=8,
    )
    if domain != "city":
        lay.row("Ingest")
        lay.add(
            timeseries(
                "Items accepted /s by kind",
                [
                    (
                        f'sum by (kind) (rate(ioc_ingest_accepted_total{{service="{domain}"}}{RATE}))',
                        "{{kind}}",
                    )
                ],
                unit="ops",
            )
        )
        lay.add(
            timeseries(
                "Items rejected /s by reason",
                [
                    (
                        f'sum by (kind, reason) (rate(ioc_ingest_rejected_total{{service="{domain}"}}{RATE}))',
                        "{{kind}} {{reason}}",
                    )
                ],
                unit="ops",
                description="Validation refusals: a field system sending bad data shows up here.",
            )
        )
        lay.add(
            stat(
                "Outbox backlog",
                f'max(ioc_outbox_backlog_events{{service="{domain}"}})',
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 100},
                    {"color": "red", "value": 1000},
                ],
            )
        )
    lay.row("HTTP")
    lay.add(
        timeseries(
            "Requests /s by status",
            [(f'sum by (status) (rate(ioc_http_requests_total{{service="{domain}"}}{RATE}))', "{{status}}")],
            unit="reqps",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Latency p95 by route",
            [
                (
                    f"histogram_quantile(0.95, sum by (route, le) (rate(ioc_http_request_duration_seconds_bucket"
                    f'{{service="{domain}"}}{RATE})))',
                    "{{route}}",
                )
            ],
            unit="s",
        ),
        w=12,
    )
    lay.row("Events and processor")
    lay.add(
        timeseries(
            "Events produced /s",
            [
                (
                    f'sum by (topic) (rate(ioc_events_produced_total{{topic=~"ioc\\\\.{domain}\\\\..*"}}{RATE}))',
                    "{{topic}}",
                )
            ],
            unit="ops",
        )
    )
    sel = f'{{consumer=~"{consumers}"}}'
    lay.add(
        timeseries(
            "Events consumed /s by processor",
            [
                (
                    f"sum by (consumer, type) (rate(ioc_events_consumed_total{sel}{RATE}))",
                    "{{consumer}} {{type}}",
                )
            ],
            unit="ops",
        )
    )
    lay.add(
        timeseries(
            "Processor lag",
            [(f"sum by (consumer, topic) (ioc_consumer_lag_records{sel})", "{{consumer}} {{topic}}")],
            description="Records behind the end of each source topic.",
        )
    )
    lay.add(
        timeseries(
            "Event age p95 by processor",
            [
                (
                    f"histogram_quantile(0.95, sum by (consumer, le) (rate(ioc_event_processing_latency_seconds_bucket"
                    f"{sel}{RATE})))",
                    "{{consumer}}",
                )
            ],
            unit="s",
            description="From the event's own time to the end of its processing.",
        )
    )
    lay.add(
        timeseries(
            "Seconds since last batch",
            [
                (
                    f"time() - max by (consumer) (ioc_processor_last_processed_timestamp_seconds{sel})",
                    "{{consumer}}",
                )
            ],
            unit="s",
        )
    )
    lay.add(
        timeseries(
            "Dead letters /s",
            [
                (
                    f"sum by (consumer, topic) (rate(ioc_events_dead_lettered_total{sel}{RATE}))",
                    "{{consumer}} {{topic}}",
                )
            ],
            unit="ops",
        )
    )
    lay.add(
        timeseries(
            "Late inputs ignored /s",
            [(f"sum by (consumer) (rate(ioc_late_inputs_ignored_total{sel}{RATE}))", "{{consumer}}")],
            unit="ops",
            description="Inputs for windows older than the processor keeps (their source may no longer "
            "revise them), ignored.",
        )
    )
    variables = [query_variable("kpi", "KPI", f'label_values(ioc_kpi_value{{kpi=~"{kpi_re}"}}, kpi)')]
    return dashboard(
        f"ioc-{domain}",
        f"IOC · {title}",
        f"The {domain} domain: KPIs, ingest, HTTP, events and its processors ({', '.join(names)}).",
        lay,
        variables,
    )


def platform_dashboard() -> dict:
    """Throughput, lag, latency, errors and dead letters across every service and processor."""
    lay = Layout()
    lay.row("Health")
    lay.add(
        timeseries(
            "Targets up",
            [('sum by (app) (up{job=~"ioc-service|ioc-processor"})', "{{app}}")],
            description="Replicas answering scrapes, per service and processor.",
        ),
        w=12,
    )
    lay.add(table("Build", "max by (service, version) (ioc_build_info)"), w=12)
    lay.row("Throughput")
    lay.add(
        timeseries(
            "Items accepted /s by service",
            [(f"sum by (service) (rate(ioc_ingest_accepted_total{RATE}))", "{{service}}")],
            unit="ops",
        )
    )
    lay.add(
        timeseries(
            "Events produced /s by topic",
            [(f"sum by (topic) (rate(ioc_events_produced_total{RATE}))", "{{topic}}")],
            unit="ops",
        )
    )
    lay.add(
        timeseries(
            "Events consumed /s by consumer",
            [(f"sum by (consumer) (rate(ioc_events_consumed_total{RATE}))", "{{consumer}}")],
            unit="ops",
        )
    )
    lay.row("Lag and freshness")
    lay.add(timeseries("Consumer lag", [("sum by (consumer) (ioc_consumer_lag_records)", "{{consumer}}")]))
    lay.add(
        timeseries(
            "Event age p95 by consumer",
            [
                (
                    f"histogram_quantile(0.95, sum by (consumer, le) "
                    f"(rate(ioc_event_processing_latency_seconds_bucket{RATE})))",
                    "{{consumer}}",
                )
            ],
            unit="s",
        )
    )
    lay.add(
        timeseries(
            "Seconds since last batch",
            [("time() - max by (consumer) (ioc_processor_last_processed_timestamp_seconds)", "{{consumer}}")],
            unit="s",
        )
    )
    lay.add(
        timeseries(
            "Processor state keys",
            [("sum by (consumer) (ioc_processor_state_keys)", "{{consumer}}")],
            description="Keys each processor holds in memory (windows, entities), over its workers. "
            "It levels off once windows reach their retention; memory growing while this "
            "is flat is not state.",
            unit="short",
        )
    )
    lay.row("Latency")
    lay.add(
        timeseries(
            "HTTP p99 by service",
            [
                (
                    f"histogram_quantile(0.99, sum by (service, le) (rate(ioc_http_request_duration_seconds_bucket"
                    f'{{route!~"/metrics|/healthz|/readyz"}}{RATE})))',
                    "{{service}}",
                )
            ],
            unit="s",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Publish acknowledgement p99",
            [
                (
                    f"histogram_quantile(0.99, sum by (le) (rate(ioc_publish_duration_seconds_bucket{RATE})))",
                    "p99",
                )
            ],
            unit="s",
            description="Time for the brokers to acknowledge a publish (acks=all).",
        ),
        w=12,
    )
    lay.row("Errors")
    lay.add(
        timeseries(
            "HTTP 5xx ratio by service",
            [
                (
                    f'sum by (service) (rate(ioc_http_requests_total{{status=~"5.."}}{RATE})) '
                    f"/ sum by (service) (rate(ioc_http_requests_total{RATE}))",
                    "{{service}}",
                )
            ],
            unit="percentunit",
        )
    )
    lay.add(
        timeseries(
            "Items rejected /s by service and reason",
            [(f"sum by (service, reason) (rate(ioc_ingest_rejected_total{RATE}))", "{{service}} {{reason}}")],
            unit="ops",
        )
    )
    lay.add(
        timeseries(
            "Dead letters /s",
            [
                (
                    f"sum by (consumer, topic) (rate(ioc_events_dead_lettered_total{RATE}))",
                    "{{consumer}} {{topic}}",
                )
            ],
            unit="ops",
        )
    )
    lay.add(
        timeseries("Outbox backlog", [("max by (service) (ioc_outbox_backlog_events)", "{{service}}")]), w=24
    )
    return dashboard(
        "ioc-platform",
        "IOC · Platform",
        "Throughput, lag, latency, errors and dead letters of every IOC service and processor.",
        lay,
        [],
    )


KAFKA_PVC = 'persistentvolumeclaim=~"data(-[0-9]+)?-ioc-kafka-.+"'
DB_PVC = 'persistentvolumeclaim=~"ioc-db-[0-9]+"'


def data_stores_dashboard() -> dict:
    """Kafka (replication, ISR, offline partitions, disk, group lag per partition) and PostgreSQL (up,
    connections, disk): what the ioc-kafka and ioc-postgresql alerts watch."""
    lay = Layout()
    lay.row("Kafka replication")
    lay.add(
        timeseries(
            "Under-replicated partitions",
            [
                ("sum by (pod) (kafka_server_replicamanager_underreplicatedpartitions)", "{{pod}}"),
                ("sum (kafka_topic_partition_under_replicated_partition)", "kafka-exporter"),
            ],
        )
    )
    lay.add(
        timeseries(
            "Partitions under min ISR / offline",
            [
                (
                    "sum by (pod) (kafka_server_replicamanager_underminisrpartitioncount)",
                    "under min ISR {{pod}}",
                ),
                ("sum (kafka_controller_kafkacontroller_offlinepartitionscount)", "offline"),
            ],
            description="Above 0: acks=all writes to those partitions fail and ingest answers 503.",
        )
    )
    lay.add(
        timeseries(
            "ISR shrinks and expands /s",
            [
                (
                    f"sum by (pod) (rate(kafka_server_replicamanager_isrshrinks_total{RATE}))",
                    "shrinks {{pod}}",
                ),
                (
                    f"sum by (pod) (rate(kafka_server_replicamanager_isrexpands_total{RATE}))",
                    "expands {{pod}}",
                ),
            ],
            unit="ops",
        )
    )
    lay.row("Kafka disk and lag")
    lay.add(
        timeseries(
            "Kafka volume used",
            [
                (
                    f"1 - kubelet_volume_stats_available_bytes{{{KAFKA_PVC}}}"
                    f" / kubelet_volume_stats_capacity_bytes{{{KAFKA_PVC}}}",
                    "{{persistentvolumeclaim}}",
                )
            ],
            unit="percentunit",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Consumer group lag by partition",
            [
                (
                    "sum by (consumergroup, partition) (kafka_consumergroup_lag)",
                    "{{consumergroup}} p{{partition}}",
                )
            ],
            description="Kafka Exporter's view of every group's lag, partition by partition.",
        ),
        w=12,
    )
    lay.row("PostgreSQL")
    lay.add(
        timeseries(
            "PostgreSQL up",
            [("max by (pod) (cnpg_collector_up)", "{{pod}}"), ("max by (instance) (pg_up)", "{{instance}}")],
        )
    )
    lay.add(
        timeseries(
            "Connections / max_connections",
            [
                (
                    "sum by (pod) (cnpg_backends_total)"
                    ' / max by (pod) (cnpg_pg_settings_setting{name="max_connections"})',
                    "{{pod}}",
                ),
                (
                    "sum by (instance) (pg_stat_activity_count) / max by (instance) (pg_settings_max_connections)",
                    "{{instance}}",
                ),
            ],
            unit="percentunit",
        )
    )
    lay.add(
        timeseries(
            "PostgreSQL volume used",
            [
                (
                    f"1 - kubelet_volume_stats_available_bytes{{{DB_PVC}}}"
                    f" / kubelet_volume_stats_capacity_bytes{{{DB_PVC}}}",
                    "{{persistentvolumeclaim}}",
                )
            ],
            unit="percentunit",
        )
    )
    return dashboard(
        "ioc-data-stores",
        "IOC · Kafka and PostgreSQL",
        "Replication, ISR, offline partitions, disk and group lag of Kafka; availability, connections and disk "
        "of PostgreSQL.",
        lay,
        [],
    )


def outputs() -> dict[Path, str]:
    boards = {"platform": platform_dashboard(), "data-stores": data_stores_dashboard()}
    boards.update({d: domain_dashboard(d, t) for d, t in DOMAINS.items()})
    return {
        OUT / f"{name}.json": json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        for name, board in boards.items()
    }


def main(argv: list[str] | None = None) -> int:
    from ioc.generated import generator_main

    return generator_main(outputs, "deploy/grafana/generate_dashboards.py", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
