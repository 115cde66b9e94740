"""Terraform checks, all offline.

- Both modules: `terraform fmt -check`.
- AWS (terraform/lambda): init from the local provider mirror, validate, a real plan with the
  offline provider switches, and `terraform test` (mocked provider, tests/lambda.tftest.hcl).
- Google (terraform/cloudrun): there is no google provider offline, so
  * variables.tf + locals.tf are evaluated with `terraform console` (they need no provider):
    defaults per variant and every validation rule, exactly as Terraform applies them;
  * python-hcl2 reads main.tf and checks the wiring (always runs, even without terraform).

The `apply` against moto on loopback (real provider, a second plan, destroy) is in
test_terraform_moto.py, marked slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from deploy_support import (TERRAFORM_DIR, aws_provider_mirror, copy_module, offline_env,
                            run_terraform, terraform_binary)


# ---------------------------------------------------------------- python-hcl2 helpers

def _unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals ('"x"'); drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_module(name: str) -> dict[str, Any]:
    """Every .tf file of terraform/<name>, merged: {'resource': {type: {name: body}}, 'variable': {...}}."""
    merged: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "locals": {}}
    for path in sorted((TERRAFORM_DIR / name).glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for block in parsed.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    merged["resource"].setdefault(_unquote(rtype), {})[_unquote(rname)] = body
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                for vname, body in block.items():
                    merged[kind][_unquote(vname)] = body
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
    return merged


def resource(module: dict[str, Any], rtype: str, rname: str) -> dict[str, Any]:
    return module["resource"][rtype][rname]


def default(module: dict[str, Any], var: str) -> Any:
    return _unquote(module["variable"][var].get("default"))


@pytest.fixture(scope="module")
def cloudrun() -> dict[str, Any]:
    return load_module("cloudrun")


# ---------------------------------------------------------------- Google: wiring (python-hcl2)

def test_cloud_run_scales_to_zero_with_a_cap(cloudrun):
    template = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    scaling = template["scaling"][0]
    assert scaling["min_instance_count"] == "${var.min_instances}"
    assert scaling["max_instance_count"] == "${var.max_instances}"
    assert default(cloudrun, "min_instances") == 0
    assert 1 <= default(cloudrun, "max_instances") <= 10
    # request-based billing (CPU only during requests) is what makes idle instances cheap
    assert template["containers"][0]["resources"][0]["cpu_idle"] == "${local.gpu ? false : !var.cpu_always_allocated}"
    assert default(cloudrun, "cpu_always_allocated") is False


def test_cloud_run_concurrency_matches_gunicorn_threads(cloudrun):
    template = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    assert template["max_instance_request_concurrency"] == "${local.concurrency}"
    env = cloudrun["locals"]["app_env"]
    assert "HTTP_THREADS = tostring(local.concurrency + 1)" in env
    assert template["containers"][0]["dynamic"][0]['"env"']["for_each"] == "${local.app_env}"
    assert 1 <= default(cloudrun, "concurrency") <= 16, "a CPU-bound model wants a small concurrency"


def test_cloud_run_probes_use_health_within_the_start_window(cloudrun):
    container = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]["containers"][0]
    startup = container["startup_probe"][0]
    liveness = container["liveness_probe"][0]
    assert _unquote(startup["http_get"][0]["path"]) == "/health"
    assert _unquote(liveness["http_get"][0]["path"]) == "/health"
    assert startup["period_seconds"] == "${var.startup_probe_period_s}"
    assert startup["failure_threshold"] == "${var.startup_probe_failure_threshold}"
    window = (default(cloudrun, "startup_probe_initial_delay_s")
              + default(cloudrun, "startup_probe_period_s") * default(cloudrun, "startup_probe_failure_threshold"))
    assert 120 <= window <= 240, f"default startup window {window}s: give the model time, within Cloud Run's 240 s"


def test_cloud_run_boosts_cpu_at_start_and_sizes_per_variant(cloudrun):
    container = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]["containers"][0]
    assert container["resources"][0]["startup_cpu_boost"] == "${var.startup_cpu_boost}"
    assert default(cloudrun, "startup_cpu_boost") is True
    assert container["resources"][0]["limits"] == "${local.resource_limits}"
    from models import registry

    assert cloudrun["locals"]["default_cpu"]["english"] == 2 and cloudrun["locals"]["default_cpu"]["multilingual"] == 4
    for sizes in ("default_cpu", "model_gib"):  # every registry variant is sized
        assert {k.strip('"') for k in cloudrun["locals"][sizes]} == set(registry.names()), sizes


def test_cloud_run_runs_as_a_service_account_with_no_roles_but_reading_its_index(cloudrun):
    template = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    assert template["service_account"] == "${google_service_account.service.email}"
    project_grants = [f"{rtype}.{rname}" for rtype, named in cloudrun["resource"].items()
                      if rtype.startswith("google_project_iam") for rname in named]
    assert project_grants == ["google_project_iam_member.trace_agent"], "no project role but writing traces"
    trace = resource(cloudrun, "google_project_iam_member", "trace_agent")
    assert _unquote(trace["role"]) == "roles/cloudtrace.agent" and "var.tracing_enabled" in trace["count"]
    grants_to_runtime = [f"{rtype}.{rname}" for rtype, named in cloudrun["resource"].items()
                         for rname, body in named.items()
                         if "google_service_account.service." in json.dumps(body.get("member", ""))]
    assert sorted(grants_to_runtime) == ["google_project_iam_member.trace_agent",
                                         "google_pubsub_topic_iam_member.service_dead_letters",
                                         "google_secret_manager_secret_iam_member.service_qdrant_key",
                                         "google_storage_bucket_iam_member.service_index",
                                         "google_storage_bucket_iam_member.service_reads_ingest"], \
        "no role but object read on the index bucket and the Qdrant key (and, with ingest, reading its bucket and " \
        "publishing to its dead-letter topic) may be granted to the service's account"
    for rtype, rname in (("google_pubsub_topic_iam_member", "service_dead_letters"),
                         ("google_storage_bucket_iam_member", "service_reads_ingest")):
        assert resource(cloudrun, rtype, rname)["count"] == "${local.ingest ? 1 : 0}"
    key = resource(cloudrun, "google_secret_manager_secret_iam_member", "service_qdrant_key")
    assert _unquote(key["role"]) == "roles/secretmanager.secretAccessor" and "local.qdrant_secret" in key["count"]
    read = resource(cloudrun, "google_storage_bucket_iam_member", "service_index")
    assert _unquote(read["role"]) == "roles/storage.objectViewer" and read["bucket"] == "${var.index_bucket}"
    assert "local.serves_index" in read["count"]


def test_cloud_run_mounts_the_index_bucket_read_only_for_the_service_and_writable_for_the_job(cloudrun):
    service = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    [volume] = [v for v in _dynamic(service, "volumes") if _unquote(v["content"][0]["name"]) == "index"]
    assert volume["content"][0]["gcs"][0]["read_only"] is True and "local.serves_index" in volume["for_each"]
    [mount] = [m for m in _dynamic(service["containers"][0], "volume_mounts")
               if _unquote(m["content"][0]["name"]) == "index"]
    assert _unquote(mount["content"][0]["mount_path"]) == "/index"
    job = resource(cloudrun, "google_cloud_run_v2_job", "batch")["template"][0]["template"][0]
    job_volumes = _dynamic(job, "volumes")
    index_volume = next(v for v in job_volumes if _unquote(v["content"][0]["name"]) == "index")
    assert index_volume["content"][0]["gcs"][0]["read_only"] is False


def test_cloud_run_is_private_unless_asked(cloudrun):
    public = resource(cloudrun, "google_cloud_run_v2_service_iam_member", "public")
    assert _unquote(public["member"]) == "allUsers"
    assert _unquote(public["role"]) == "roles/run.invoker"
    assert "var.allow_unauthenticated" in public["count"]
    assert default(cloudrun, "allow_unauthenticated") is False
    invokers = resource(cloudrun, "google_cloud_run_v2_service_iam_member", "invokers")
    assert "var.invokers" in invokers["for_each"]
    assert default(cloudrun, "invokers") == []
    iam_members = cloudrun["resource"]["google_cloud_run_v2_service_iam_member"]
    assert set(iam_members) == {"public", "invokers", "push_invokes"}, "no other path may grant invoke"
    push = iam_members["push_invokes"]  # ingest's push subscription, only with ingest_bucket
    assert push["count"] == "${local.ingest ? 1 : 0}" and "google_service_account.push[0]" in push["member"]


def test_cloud_run_service_and_job_pass_the_variant_and_project(cloudrun):
    job = resource(cloudrun, "google_cloud_run_v2_job", "batch")
    container = job["template"][0]["template"][0]["containers"][0]
    assert container["dynamic"][0]['"env"']["for_each"] == "${local.job_env}"
    for env in (cloudrun["locals"]["app_env"], cloudrun["locals"]["job_env"]):
        assert "local.model_env" in env
        # Cloud Run does not set GOOGLE_CLOUD_PROJECT; without it trace headers give no Cloud Logging trace link.
        assert "GOOGLE_CLOUD_PROJECT = var.project_id" in env


def test_batch_job_runs_the_same_image_with_tasks_and_retries(cloudrun):
    job = resource(cloudrun, "google_cloud_run_v2_job", "batch")
    service = resource(cloudrun, "google_cloud_run_v2_service", "service")
    execution = job["template"][0]
    task = execution["template"][0]
    assert execution["task_count"] == "${var.job_tasks}"
    assert execution["parallelism"] == "${var.job_parallelism}"
    assert task["max_retries"] == "${var.job_max_retries}"
    assert task["timeout"] == '"${var.job_task_timeout_s}s"'
    assert task["containers"][0]["image"] == service["template"][0]["containers"][0]["image"] == "${var.image}"
    assert task["service_account"] == "${google_service_account.job.email}"
    assert default(cloudrun, "job_max_retries") >= 1


# Knobs a user tunes: each must carry a validation block with the platform's range.
CLOUDRUN_KNOBS = ["cpu", "memory_gib", "min_instances", "max_instances", "concurrency", "request_timeout_s",
                  "startup_probe_initial_delay_s", "startup_probe_period_s", "startup_probe_failure_threshold",
                  "liveness_probe_period_s", "liveness_probe_failure_threshold", "job_tasks", "job_parallelism",
                  "job_max_retries", "job_task_timeout_s", "model_variant", "ingress", "invokers", "keep_images",
                  "index_path", "index_size_gib", "qdrant_url", "gpu_type", "gpu_concurrency", "ingest_bucket",
                  "ingest_max_delivery_attempts"]
LAMBDA_KNOBS = ["memory_mb", "timeout_s", "ephemeral_storage_mb", "reserved_concurrency",
                "provisioned_concurrency", "function_url_auth", "log_retention_days", "ecr_keep_images",
                "model_variant", "architecture", "image_tag", "index_mib", "qdrant_url", "qdrant_api_key_secret_arn",
                "gpu_type", "ingest_bucket", "ingest_batch_size", "ingest_max_concurrency", "ingest_max_receive_count"]


@pytest.mark.parametrize("module_name,knobs", [("cloudrun", CLOUDRUN_KNOBS), ("lambda", LAMBDA_KNOBS)])
def test_every_knob_is_validated_and_documented(module_name, knobs):
    module = load_module(module_name)
    for name in knobs:
        assert module["variable"][name].get("validation"), f"{module_name}: variable {name} has no validation"
    for name, body in module["variable"].items():
        assert _unquote(body.get("description", "")).strip(), f"{module_name}: variable {name} has no description"


@pytest.mark.parametrize("module_name,resource_address,url_attribute", [
    ("cloudrun", "google_cloud_run_v2_service.service", "uri"),
    ("lambda", "aws_lambda_function_url.live", "function_url"),
])
def test_both_modules_output_the_url(module_name, resource_address, url_attribute):
    """`url` is the service's (Cloud Run) / the live alias' function URL (Lambda) attribute, null
    exactly when that resource is not created. For Lambda, terraform test (mocked value) and the moto
    apply (real value) also check the output's value; for Cloud Run this is the only check."""
    module = load_module(module_name)
    rtype, rname = resource_address.split(".")
    count = resource(module, rtype, rname)["count"]
    assert count == "${local.deploy_app ? 1 : 0}", f"{resource_address} count changed: {count}"
    value = module["output"]["url"]["value"]
    assert value == f"${{local.deploy_app ? {resource_address}[0].{url_attribute} : null}}", value


# ---------------------------------------------------------------- terraform itself

def test_terraform_fmt_is_clean(tmp_path):
    env = offline_env(tmp_path)
    result = run_terraform(["fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM_DIR)],
                           cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def cloudrun_vars_only(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """terraform/cloudrun's variables.tf + locals.tf, initialised: needs no provider."""
    terraform_binary()
    work = tmp_path_factory.mktemp("cloudrun_vars")
    module = copy_module("cloudrun", work, files=("variables.tf", "locals.tf"))
    env = offline_env(work)
    init = run_terraform(["init", "-backend=false", "-no-color"], cwd=module, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    return module, env


def _var_args(variables: dict[str, Any]) -> list[str]:
    args = ["-var", "project_id=test-project"]
    for key, value in variables.items():
        args += ["-var", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def cloudrun_eval(setup: tuple[Path, dict[str, str]], expression: str, **variables: Any) -> Any:
    """Value of an expression of the Cloud Run module, computed by `terraform console`."""
    module, env = setup
    result = run_terraform(["console", "-no-color", *_var_args(variables)], cwd=module, env=env,
                           stdin=f"jsonencode({expression})\n", timeout=60)
    # console exits 0 even when a validation fails: look for the error itself
    assert result.returncode == 0 and "Error:" not in result.stderr, result.stdout + result.stderr
    return _json_out(result.stdout)


def cloudrun_plan(setup: tuple[Path, dict[str, str]], **variables: Any) -> tuple[int, str]:
    """`terraform plan` of the variables-only copy: where validation rules run, with a real exit code."""
    module, env = setup
    result = run_terraform(["plan", "-no-color", "-lock=false", *_var_args(variables)], cwd=module, env=env,
                           timeout=60)
    return result.returncode, result.stdout + result.stderr


def _json_out(output: str) -> Any:
    """`terraform console` prints jsonencode(...) as a quoted HCL string."""
    return json.loads(json.loads(output.strip()))


def test_cloud_run_traffic_all_latest_or_a_tagged_canary(cloudrun_vars_only, cloudrun):
    assert cloudrun_eval(cloudrun_vars_only, "local.traffic") == [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": None, "percent": 100, "tag": None}]
    split = cloudrun_eval(cloudrun_vars_only, "local.traffic", stable_revision="clipserve-00007-abc", canary_percent=5)
    assert split == [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "clipserve-00007-abc", "percent": 95,
         "tag": "stable"},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": None, "percent": 5, "tag": "canary"}]
    zero = cloudrun_eval(cloudrun_vars_only, "local.traffic", stable_revision="clipserve-00007-abc")
    assert [t["percent"] for t in zero] == [100, 0] and zero[1]["tag"] == "canary"  # smoke-tested, no traffic
    for bad in ({"canary_percent": 101}, {"canary_percent": 2.5}, {"stable_revision": "Not_A_Revision"}):
        status, output = cloudrun_plan(cloudrun_vars_only, **bad)
        assert status != 0 and "Invalid value for variable" in output, bad
    service = resource(cloudrun, "google_cloud_run_v2_service", "service")
    assert service["dynamic"][0]['"traffic"']["for_each"] == "${local.traffic}"


def test_cloud_run_tracing_goes_to_cloud_trace(cloudrun_vars_only):
    env = cloudrun_eval(cloudrun_vars_only, "local.app_env", tracing_enabled=True)
    assert env["OTEL_ENABLED"] == "true" and env["OTEL_TRACES_EXPORTER"] == "gcp_trace"
    assert "OTEL_ENABLED" not in cloudrun_eval(cloudrun_vars_only, "local.app_env")


def test_cloud_run_defaults_per_variant(cloudrun_vars_only):
    limits, env, job_env = cloudrun_eval(cloudrun_vars_only, "[local.resource_limits, local.app_env, local.job_env]")
    assert limits == {"cpu": "2", "memory": "4Gi"}
    assert env["MODEL_VARIANT"] == "english"
    assert env["HTTP_THREADS"] == "9" and env["TORCH_THREADS"] == "2"
    assert env["GOOGLE_CLOUD_PROJECT"] == job_env["GOOGLE_CLOUD_PROJECT"] == "test-project"
    assert job_env == {"MODEL_VARIANT": "english", "TORCH_THREADS": "2", "GOOGLE_CLOUD_PROJECT": "test-project"}
    limits, env = cloudrun_eval(cloudrun_vars_only, "[local.resource_limits, local.app_env]",
                                model_variant="multilingual", concurrency=4)
    assert limits == {"cpu": "4", "memory": "6Gi"}
    assert env["MODEL_VARIANT"] == "multilingual" and env["HTTP_THREADS"] == "5"


def test_cloud_run_serves_several_models_sized_for_all_of_them(cloudrun_vars_only):
    limits, env, job_env = cloudrun_eval(cloudrun_vars_only, "[local.resource_limits, local.app_env, local.job_env]",
                                         models='["english","siglip2-b16"]')
    assert env["MODELS"] == job_env["MODELS"] == "english,siglip2-b16" and "MODEL_VARIANT" not in env
    assert limits == {"cpu": "4", "memory": "7Gi"}  # the larger model's vCPUs; 1.5 + 2.5 + 2.5 GiB, rounded up
    for bad in ('["english","english"]', '["klingon"]', "[]"):
        status, output = cloudrun_plan(cloudrun_vars_only, models=bad)
        assert status != 0 and 'variable "models"' in output, bad


def test_cloud_run_takes_the_qdrant_key_by_secret_reference(cloudrun_vars_only, cloudrun):
    env, job_env = cloudrun_eval(cloudrun_vars_only, "[local.app_env, local.job_env]",
                                 qdrant_url="https://q.example:6333", qdrant_collection="products",
                                 qdrant_api_key_secret="qdrant-key")
    for values in (env, job_env):
        assert values["QDRANT_URL"] == "https://q.example:6333" and values["QDRANT_COLLECTION"] == "products"
        assert "QDRANT_API_KEY" not in values  # never a value: a secret reference below
    container = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]["containers"][0]
    [secret_env] = [e for e in _dynamic(container, "env") if "qdrant" in e["for_each"]]
    ref = secret_env["content"][0]["value_source"][0]["secret_key_ref"][0]
    assert ref["secret"] == "${env.value}" and _unquote(ref["version"]) == "latest"
    rc, out = cloudrun_plan(cloudrun_vars_only, qdrant_url="https://q:6333", index_bucket="b", index_path="x/v1")
    assert rc != 0 and "choose one search backend" in out


def test_cloud_run_gpu_settings(cloudrun_vars_only, cloudrun):
    limits, env, job_env = cloudrun_eval(cloudrun_vars_only, "[local.resource_limits, local.app_env, local.job_env]",
                                         gpu_type="nvidia-l4")
    assert limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert env["DEVICE"] == job_env["DEVICE"] == "cuda" and env["HTTP_THREADS"] == "33"
    assert env["DECODE_CONCURRENCY"] == job_env["DECODE_CONCURRENCY"] == "4"  # every vCPU decodes on a GPU
    assert not {"DEVICE", "DECODE_CONCURRENCY"} & set(cloudrun_eval(cloudrun_vars_only, "local.app_env"))
    for variables, message in (({"gpu_type": "nvidia-l4", "cpu": 2}, "at least 4 vCPU"),
                               ({"gpu_type": "nvidia-t4"}, "nvidia-l4")):
        rc, out = cloudrun_plan(cloudrun_vars_only, **variables)
        assert rc != 0 and message in out, out
    service = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    [selector] = _dynamic(service, "node_selector")
    assert selector["content"][0]["accelerator"] == "${node_selector.value}" and "local.gpu" in selector["for_each"]
    assert "local.gpu" in service["gpu_zonal_redundancy_disabled"]
    assert "local.gpu ? false" in service["containers"][0]["resources"][0]["cpu_idle"]
    job = resource(cloudrun, "google_cloud_run_v2_job", "batch")["template"][0]["template"][0]
    assert _dynamic(job, "node_selector")


def _dynamic(block: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The `dynamic "name"` blocks of a block (python-hcl2 keeps the label's quotes)."""
    return [body for entry in block.get("dynamic", []) for label, body in entry.items() if _unquote(label) == name]


def test_cloud_run_serves_the_index_from_the_mount_with_memory_for_it(cloudrun_vars_only):
    limits, env = cloudrun_eval(cloudrun_vars_only, "[local.resource_limits, local.app_env]",
                                index_bucket="my-indexes", index_path="products/v3", index_size_gib=2.3)
    assert env["INDEX_DIR"] == "/index/products/v3" and env["INDEX_LOAD"] == "memory"
    assert limits == {"cpu": "2", "memory": "7Gi"}  # ceil(4 + 1.25 x 2.3)
    env = cloudrun_eval(cloudrun_vars_only, "local.app_env")
    assert "INDEX_DIR" not in env
    assert cloudrun_eval(cloudrun_vars_only, "local.resource_limits", baked_index_mib=1024) == {"cpu": "2",
                                                                                                "memory": "6Gi"}


@pytest.mark.parametrize("variables,offending", [
    ({"index_bucket": "b"}, "index_path"),
    ({"index_bucket": "b", "index_path": "../etc"}, "index_path"),
    ({"index_size_gib": 10}, "memory_gib"),  # 4 + 12.5 GiB on 2 vCPUs: more than 4 GiB per vCPU
    ({"startup_probe_period_s": 10, "startup_probe_failure_threshold": 30}, "startup_probe_failure_threshold"),
    ({"min_instances": 3, "max_instances": 2}, "max_instances"),
    ({"cpu": 1, "memory_gib": 8}, "memory_gib"),
    ({"cpu": 4, "memory_gib": 1}, "memory_gib"),
    ({"cpu": 3}, "cpu"),
    ({"concurrency": 0}, "concurrency"),
    ({"request_timeout_s": 3601}, "request_timeout_s"),
    ({"model_variant": "klingon"}, "model_variant"),
    ({"invokers": ["allUsers"]}, "invokers"),
    ({"job_max_retries": 11}, "job_max_retries"),
])
def test_cloud_run_rejects_values_the_platform_refuses(cloudrun_vars_only, variables, offending):
    rc, out = cloudrun_plan(cloudrun_vars_only, **variables)
    assert rc != 0, f"{variables} was accepted"
    assert "Invalid value for variable" in out and f'variable "{offending}"' in out, out


def test_cloud_run_accepts_the_platform_limits(cloudrun_vars_only):
    limits = dict(cpu=8, memory_gib=32, concurrency=255, min_instances=0, max_instances=1000,
                  request_timeout_s=3600, startup_probe_initial_delay_s=0, startup_probe_period_s=240,
                  startup_probe_failure_threshold=1, job_tasks=10000, job_max_retries=10)
    rc, out = cloudrun_plan(cloudrun_vars_only, **limits)
    assert rc == 0, out
    assert cloudrun_eval(cloudrun_vars_only, "local.resource_limits", **limits) == {"cpu": "8", "memory": "32Gi"}


@pytest.fixture(scope="module")
def lambda_module(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """terraform/lambda copied and initialised from the local provider mirror."""
    terraform_binary()
    mirror = aws_provider_mirror()
    work = tmp_path_factory.mktemp("tf_lambda")
    module = copy_module("lambda", work)
    env = offline_env(work, mirror)
    init = run_terraform(["init", "-backend=false", "-no-color"], cwd=module, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    return module, env


def test_lambda_module_validates(lambda_module):
    module, env = lambda_module
    result = run_terraform(["validate", "-no-color"], cwd=module, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lambda_plan_offline(lambda_module):
    """A real provider plan (no mocks) with dummy credentials: what a deploy would create."""
    module, env = lambda_module
    plan = run_terraform(["plan", "-no-color", "-out=tfplan", "-var", "offline_checks=true",
                          "-var", "image_tag=t1", "-var", "model_variant=multilingual"], cwd=module, env=env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    shown = run_terraform(["show", "-json", "tfplan"], cwd=module, env=env)
    assert shown.returncode == 0, shown.stderr
    planned = {r["address"]: r["values"]
               for r in json.loads(shown.stdout)["planned_values"]["root_module"]["resources"]}
    function = planned["aws_lambda_function.service[0]"]
    assert function["package_type"] == "Image"
    assert function["memory_size"] == 6144 and function["timeout"] == 60
    assert function["reserved_concurrent_executions"] == 10
    assert function["image_config"] == [{"entry_point": ["/opt/venv/bin/python", "-m", "awslambdaric"],
                                         "command": ["infra.lambda_handler.handler"],
                                         "working_directory": "/app"}]
    assert function["environment"][0]["variables"]["MODEL_VARIANT"] == "multilingual"
    assert planned["aws_lambda_function_url.live[0]"]["authorization_type"] == "AWS_IAM"
    assert planned["aws_cloudwatch_log_group.function"]["retention_in_days"] == 30
    assert not any(address.startswith("aws_lambda_permission") for address in planned), \
        "the default deploy must not add resource-policy grants"
    assert not any(address.startswith("aws_lambda_provisioned") for address in planned)


def test_lambda_refuses_a_gpu(lambda_module):
    module, env = lambda_module
    plan = run_terraform(["plan", "-no-color", "-var", "offline_checks=true", "-var", "gpu_type=nvidia-l4"],
                         cwd=module, env=env)
    assert plan.returncode != 0 and "Lambda has no GPUs" in plan.stdout + plan.stderr


def test_lambda_terraform_test_suite_passes(lambda_module):
    """tests/lambda.tftest.hcl: memory, timeout, concurrency, auth and image config on a mocked provider."""
    module, env = lambda_module
    result = run_terraform(["test", "-no-color"], cwd=module, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed, 0 failed", result.stdout)
    assert passed and int(passed.group(1)) >= 10, result.stdout


def test_cloud_run_memorystore_is_optional_private_and_bounded(cloudrun):
    """redis_enabled: Memorystore with AUTH, TLS and allkeys-lru; the service and the job reach it over Direct VPC
    egress (private ranges only, so image URLs still go straight out) and get REDIS_URL, REDIS_CA_FILE and, by secret
    reference, REDIS_PASSWORD."""
    assert default(cloudrun, "redis_enabled") is False
    instance = resource(cloudrun, "google_redis_instance", "cache")
    assert instance["count"] == "${var.redis_enabled ? 1 : 0}"
    assert instance["auth_enabled"] is True and _unquote(instance["transit_encryption_mode"]) == "SERVER_AUTHENTICATION"
    assert _unquote(instance["redis_configs"]["maxmemory-policy"]) == "allkeys-lru"
    assert "auth_string" in resource(cloudrun, "google_secret_manager_secret_version", "redis_auth")["secret_data"]
    service = resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0]
    job = resource(cloudrun, "google_cloud_run_v2_job", "batch")["template"][0]["template"][0]
    for template in (service, job):
        [vpc] = _dynamic(template, "vpc_access")
        content = vpc["content"][0]
        assert _unquote(content["egress"]) == "PRIVATE_RANGES_ONLY"
        assert content["network_interfaces"][0]["subnetwork"] == "${var.vpc_subnetwork}"
        container = template["containers"][0]
        envs = _dynamic(container, "env")
        assert any(e["for_each"] == "${local.redis_env}" for e in envs)
        [password] = [e for e in envs if "redis_auth" in str(e["for_each"])]
        assert _unquote(password["content"][0]["name"]) == "REDIS_PASSWORD"
        assert "secret_key_ref" in password["content"][0]["value_source"][0]
        assert any("/secrets/redis-ca" in str(m["content"]) for m in _dynamic(container, "volume_mounts"))
    redis_env = cloudrun["locals"]["redis_env"]
    assert "rediss://" in redis_env and "REDIS_CA_FILE" in redis_env and "password" not in redis_env.lower()


# ---------------------------------------------------------------- Google: Cloud Monitoring (monitoring.tf)

# Cloud Run's built-in metrics, as Cloud Monitoring's PromQL names them.
CLOUD_RUN_METRICS = {"run_googleapis_com:request_count", "run_googleapis_com:request_latencies_bucket",
                     "run_googleapis_com:container_instance_count",
                     "run_googleapis_com:container_cpu_utilizations_bucket",
                     "run_googleapis_com:container_memory_utilizations_bucket"}


@pytest.fixture(scope="module")
def request_line_fields(tiny_model_dir) -> set[str]:
    """The LogEntry fields (jsonPayload.X, labels.X) of real request lines, as Cloud Run's handler writes them."""
    import io
    import logging

    from handler.app import create_app
    from infra.logs import make_handler
    from infra.settings import Settings

    app = create_app(Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch"))
    app.extensions["clipserve"].start()
    assert app.extensions["clipserve"].engine.wait_ready(120)
    stream = io.StringIO()
    handler = make_handler(cloud_run=True, project="p", stream=stream)
    logger = logging.getLogger("clipserve.request")
    logger.addHandler(handler)
    level, disabled = logger.level, logger.disabled
    logger.disabled = False  # a logging config earlier in the run may have disabled it
    logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears the cached "INFO is off" of earlier tests
    try:
        client = app.test_client()
        client.post("/embed/text", json={"texts": ["a cat"]})
        client.post("/embed/text", data=b"{", content_type="application/json")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
        app.extensions["clipserve"].shutdown(1)
    fields: set[str] = set()
    for line in stream.getvalue().splitlines():
        entry = json.loads(line)
        fields |= {f"labels.{k}" for k in entry.pop("logging.googleapis.com/labels", {})}
        fields |= {f"jsonPayload.{k}" for k in entry if not k.startswith("logging.googleapis.com/")}
    return fields


def cloud_monitoring_queries(cloudrun_vars_only) -> tuple[dict, list[str]]:
    """(the log-based metrics, every PromQL query of the alert policies and the dashboard)."""
    metrics = cloudrun_eval(cloudrun_vars_only, "local.log_metrics", name="clipserve")
    alerts = cloudrun_eval(cloudrun_vars_only, "local.alerts", name="clipserve")
    template = (TERRAFORM_DIR / "cloudrun" / "monitoring" / "dashboard.json.tftpl").read_text()
    dashboard = json.loads(template.replace("${service}", "clipserve").replace("$${", "${"))
    queries = [spec[0] for spec in alerts.values()]
    queries += [d["timeSeriesQuery"]["prometheusQuery"] for tile in dashboard["mosaicLayout"]["tiles"]
                for d in tile["widget"]["xyChart"]["dataSets"]]
    return metrics, queries


def test_cloud_monitoring_reads_only_metrics_that_exist(cloudrun_vars_only):
    from promql import metric_names  # the same PromQL reader as the Grafana check

    metrics, queries = cloud_monitoring_queries(cloudrun_vars_only)
    defined = set()
    for name, spec in metrics.items():
        base = f"logging_googleapis_com:user_{name}"
        defined |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if spec["kind"] == "distribution" else {base}
    assert len(queries) >= 15
    wanted = set().union(*(metric_names(q.replace("${__interval}", "5m")) for q in queries))
    assert wanted - CLOUD_RUN_METRICS - defined == set(), sorted(wanted - CLOUD_RUN_METRICS - defined)
    assert {f"logging_googleapis_com:user_{n}" for n in ("clipserve_health_failing", "clipserve_cache_breaker",
                                                         "clipserve_search_unavailable")} <= wanted


def test_log_based_metrics_read_fields_the_request_line_has(cloudrun_vars_only, request_line_fields):
    metrics, _ = cloud_monitoring_queries(cloudrun_vars_only)
    for name, spec in metrics.items():
        texts = [spec["filter"], spec["value"] or "", *spec["labels"].values()]
        used = set(re.findall(r"(?<!resource\.)\b((?:jsonPayload|labels)\.[A-Za-z_]+)", " ".join(texts)))
        assert used - request_line_fields == set(), (name, sorted(used - request_line_fields))
    assert {"jsonPayload.route", "jsonPayload.latency_ms", "jsonPayload.queue_wait_ms", "jsonPayload.batch_size",
            "jsonPayload.error_code", "labels.python_logger"} <= request_line_fields


def test_alert_policies_cover_the_slos_and_notify_the_channels(cloudrun_vars_only, cloudrun):
    alerts = cloudrun_eval(cloudrun_vars_only, "local.alerts", name="clipserve", latency_slo_s=1.5)
    assert set(alerts) == {"5xx ratio over 2%", "p99 latency over the SLO", "429 ratio over 5% (saturated)",
                           "model not ready (health failing)", "shared cache breaker open",
                           "search index or collection unreachable"}
    assert alerts["p99 latency over the SLO"][0].endswith("> 1500")
    policy = resource(cloudrun, "google_monitoring_alert_policy", "service")
    assert policy["notification_channels"] == "${var.notification_channels}"
    status, output = cloudrun_plan(cloudrun_vars_only, notification_channels=["email-me"])
    assert status != 0 and "notification_channels" in output


def test_cloud_run_ingest_is_off_by_default_and_pushes_with_oidc_to_the_route(cloudrun, cloudrun_vars_only):
    """ingest_bucket: the bucket's notifications -> a topic -> a push subscription to /ingest/gcs whose OIDC token
    (its own service account, the agreed audience) the service checks; dead letters after N attempts; the IAM the
    platform needs (Cloud Storage's agent publishes, Pub/Sub's agent dead-letters and mints tokens, the service
    reads the bucket and forwards permanent failures). The env the service gets names the settings it reads."""
    from infra.settings import Settings

    assert default(cloudrun, "ingest_bucket") is None
    names = [n for n, r in cloudrun["resource"].get("google_pubsub_subscription", {}).items()]
    assert names == ["ingest"]
    for rtype, named in cloudrun["resource"].items():
        for rname, body in named.items():
            if "ingest" in rname or rname in ("push", "gcs_publishes", "push_invokes") or rname.startswith("agent_"):
                assert body["count"] == "${local.ingest ? 1 : 0}", f"{rtype}.{rname} is not off by default"
    sub = resource(cloudrun, "google_pubsub_subscription", "ingest")
    push = sub["push_config"][0]
    assert _unquote(push["push_endpoint"]) == "${google_cloud_run_v2_service.service[0].uri}/ingest/gcs"
    assert {k: _unquote(v) for k, v in push["oidc_token"][0].items() if not k.startswith("__")} == {
        "service_account_email": "${google_service_account.push[0].email}", "audience": "${local.ingest_audience}"}
    assert sub["dead_letter_policy"][0]["max_delivery_attempts"] == "${var.ingest_max_delivery_attempts}"
    note = resource(cloudrun, "google_storage_notification", "ingest")
    assert _unquote(note["payload_format"]) == "JSON_API_V1"
    assert [_unquote(e) for e in note["event_types"]] == ["OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE"]
    roles = {(rtype, rname): _unquote(body.get("role", "")) for rtype, named in cloudrun["resource"].items()
             for rname, body in named.items() if "iam" in rtype}
    assert roles[("google_pubsub_topic_iam_member", "agent_dead_letters")] == "roles/pubsub.publisher"
    assert roles[("google_pubsub_subscription_iam_member", "agent_acks")] == "roles/pubsub.subscriber"
    assert roles[("google_service_account_iam_member", "agent_mints_push_tokens")] == "roles/iam.serviceAccountTokenCreator"
    assert roles[("google_storage_bucket_iam_member", "service_reads_ingest")] == "roles/storage.objectViewer"
    assert roles[("google_cloud_run_v2_service_iam_member", "push_invokes")] == "roles/run.invoker"
    envs = [b['"env"'] for b in resource(cloudrun, "google_cloud_run_v2_service", "service")["template"][0][
        "containers"][0]["dynamic"] if '"env"' in b]
    assert any(b["for_each"] == "${local.ingest_env}" for b in envs)
    ingest_locals = cloudrun["locals"]["ingest_env"]
    settings_env = {f.metadata["env"] for f in __import__("dataclasses").fields(Settings)}
    assert set(re.findall(r"(INGEST_[A-Z_]+)", str(ingest_locals))) <= settings_env
    status, output = cloudrun_plan(cloudrun_vars_only, ingest_bucket="photos")
    assert status != 0 and "set qdrant_url too" in output
    status, output = cloudrun_plan(cloudrun_vars_only, ingest_bucket="photos", qdrant_url="https://q.example:6333",
                                   ingest_max_delivery_attempts=3)
    assert status != 0 and "Pub/Sub allows 5 to 100" in output
