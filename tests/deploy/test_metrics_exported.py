"""Every metric a Grafana dashboard or a Prometheus rule queries is one a running IOC service exports.

The metric families are read from the /metrics endpoint of a real IOC app (shared.http.create_service_app
with its lifespan against the session's broker and PostgreSQL), by their # HELP / # TYPE lines; recording
rule outputs (level:metric:op) are not exported by services and are checked against the recording rules.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import yaml
from fastapi import APIRouter

from shared.config import ServiceSettings
from shared.http import create_service_app
from shared.testing import running_app
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.integration

METRIC = re.compile(r"(?<![:\w])(ioc_[a-z0-9_]+)(?![:\w])")  # not the middle of a level:metric:op name
RECORDED = re.compile(r"\b([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _rule_groups() -> list[dict]:
    return [
        g
        for f in ("recording.yml", "alerts.yml")
        for g in yaml.safe_load((DEPLOY / "prometheus" / "rules" / f).read_text())["groups"]
    ]


def _queries() -> dict[str, str]:
    """Every PromQL expression of the dashboards and the rules, by where it is."""
    out: dict[str, str] = {}
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", ()):
                out[f"{path.name}: {panel['title']} {target['refId']}"] = target["expr"]
        for var in board["templating"]["list"]:
            out[f"{path.name}: variable {var['name']}"] = var["query"]["query"]
    for group in _rule_groups():
        for rule in group["rules"]:
            out[f"rules: {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    return out


def _families(exposition: str) -> dict[str, str]:
    types = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


def test_queries_were_found():
    queries = _queries()
    assert len([q for q in queries if q.endswith(".json") or ".json:" in q]) >= 50
    assert len([q for q in queries if q.startswith("rules:")]) >= 20


async def test_every_queried_metric_is_exported_by_a_running_service(kafka_settings, db_settings):
    router = APIRouter()

    @router.get("/v1/ping")
    async def ping() -> dict:
        return {"ok": True}

    name = f"deploycheck_{uuid.uuid4().hex[:6]}"
    settings = ServiceSettings(
        service_name=name, kafka=kafka_settings, database=db_settings, create_topics=False
    )
    app = create_service_app(
        settings, name=name, title="deploy check", description="metrics families", routers=[router]
    )
    async with running_app(app) as client:
        assert (await client.get("/v1/ping")).status_code == 200
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    families = _families(scraped.text)
    assert f'ioc_build_info{{service="{name}",version=' in scraped.text  # the lifespan really ran

    recorded = {r["record"] for g in _rule_groups() for r in g["rules"] if "record" in r}
    missing = []
    for where, expr in _queries().items():
        for metric in METRIC.findall(expr):
            base = metric
            if metric.endswith(HISTOGRAM_SUFFIXES) and families.get(metric.rsplit("_", 1)[0]) == "histogram":
                base = metric.rsplit("_", 1)[0]
            if base not in families:
                missing.append(f"{where}: {metric}")
        for rec in RECORDED.findall(expr):
            if rec not in recorded:
                missing.append(f"{where}: recording rule {rec} is not defined")
    assert not missing, "queried but not exported:\n" + "\n".join(missing)


def test_the_check_catches_an_unknown_metric():
    """The extraction really sees metric names (so the test above cannot pass vacuously)."""
    assert METRIC.findall('sum(rate(ioc_made_up_total{service="x"}[5m]))') == ["ioc_made_up_total"]
    assert "ioc_kpi_value" in {m for q in _queries().values() for m in METRIC.findall(q)}
