"""Dashboards and alerts as code, checked against the service: every metric a Grafana panel, a Prometheus alert or
a Cloud Monitoring chart or policy reads is one the service exports (a renamed metric breaks the build, not the
dashboard); promtool checks the rules and runs their unit tests (each alert fires, and stays quiet when healthy)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from handler.app import create_app
from infra.settings import Settings
from search.build import write_index
from promql import metric_names
from servers import REPO, need_tool

MONITORING = REPO / "monitoring"
# Series Prometheus itself makes (not the service): allowed in alerts.
PROMETHEUS_OWN = {"up"}
def test_the_extractor_finds_names_and_only_names():
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(foo_bucket{job=~"$job", route!~"/a|/b"}[5m])))'
            ' / ignoring (status) group_left sum(bar_total) * on (job, instance) group_left (revision) baz{x="y"}')
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz"}
    assert metric_names('label_values(clipserve_build_info{job=~"$job"}, revision)') == {"clipserve_build_info"}


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> set[str]:
    """Every series name GET /metrics exposes, from the TYPE lines (histograms and counters expanded)."""
    from models.bundle import model_identity

    model = model_identity(tiny_model_dir, "english")
    folder = write_index(tmp_path_factory.mktemp("dash") / "i" / "v1", np.eye(2, model["dim"], dtype=np.float32),
                         [("a", {}), ("b", {})], columns={}, from_csv=False, model=model, modality="image", name="i")
    app = create_app(Settings(model_dir=tiny_model_dir, metrics_enabled=True, index_dir=folder, precision="fp32",
                              runtime="torch"))
    app.extensions["clipserve"].start()
    assert app.extensions["clipserve"].engine.wait_ready(120)
    try:
        client = app.test_client()
        client.post("/embed/text", json={"texts": ["a"]})
        text = client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["clipserve"].shutdown(1)
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "counter":
            names |= {name if name.endswith("_total") else f"{name}_total"}
        else:
            names.add(name)
    return names


def grafana_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana" / "clipserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_grafana_panel_reads_metrics_the_service_exports(exported):
    exprs = grafana_exprs()
    assert len(exprs) >= 20
    wanted = set().union(*map(metric_names, exprs))
    assert wanted - exported == set(), f"panels read metrics /metrics does not export: {sorted(wanted - exported)}"
    for must in ("clipserve_requests_total", "clipserve_request_duration_seconds_bucket", "clipserve_queue_depth",
                 "clipserve_batch_size_bucket", "clipserve_cache_requests_total", "clipserve_search_results_sum",
                 "process_cpu_seconds_total", "process_resident_memory_bytes", "clipserve_gpu_memory_bytes"):
        assert must in wanted, must


def test_every_alert_reads_metrics_the_service_exports(exported):
    wanted = set().union(*map(metric_names, alert_exprs()))
    assert wanted - exported - PROMETHEUS_OWN == set(), sorted(wanted - exported - PROMETHEUS_OWN)


def test_a_renamed_metric_is_caught(exported):
    assert metric_names("rate(clipserve_requests_totals[5m])") - exported == {"clipserve_requests_totals"}


def test_promtool_checks_the_rules_and_runs_their_tests():
    promtool = need_tool("promtool")
    folder = MONITORING / "prometheus"
    checked = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=folder, capture_output=True,
                            text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_promtool_fails_a_test_whose_alert_does_not_fire(tmp_path):
    """The unit tests can fail: the same tests against rules whose threshold was raised out of reach."""
    promtool = need_tool("promtool")
    rules = (MONITORING / "prometheus" / "alerts.yml").read_text().replace("> 0.02", "> 0.9")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "alerts_test.yml").write_text((MONITORING / "prometheus" / "alerts_test.yml").read_text())
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert tested.returncode != 0 and "ClipserveErrorRatioHigh" in tested.stdout + tested.stderr
