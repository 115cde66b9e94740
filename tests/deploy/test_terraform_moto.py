"""`terraform apply` of terraform/lambda against moto on loopback, then a second plan, then destroy.

The plan and the mocked `terraform test` in test_terraform.py never talk to an AWS API; this one
does: the real hashicorp/aws provider (from the local mirror) creates the ECR repository, IAM role,
log group, image function, `live` alias and function URL on a `moto_server` bound to 127.0.0.1,
and boto3 then reads back what moto stored, independently of Terraform's state. Nothing leaves the
machine: every service the module uses goes to moto through `aws_endpoint_url`, the credentials
are dummies and the user's AWS config files are hidden.

Limits of moto (5.x), both handled here rather than in terraform/lambda:
- no provisioned concurrency: the apply runs with provisioned_concurrency = 0 (the default);
- moto drops the function's LoggingConfig (image_config, ephemeral storage and the rest round-trip),
  so the second plan always re-adds `logging_config` (and, since publish = true, a new version and
  the alias moving to it). It cannot be pinned away: the block is already explicit. The test asserts
  that this is the *only* drift, so any other attribute that does not round-trip still fails it.

Wall time on the 2-vCPU dev VM (shared, load about 2): 50 s under pytest (by hand: apply 17 s,
second plan 9 s, destroy 11 s, init 1 s; moto starts in under 2 s), hence `slow`.

Skips, with the reason, where terraform, the provider mirror or moto[server] is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_support import (aws_provider_mirror, copy_module, offline_env, run_terraform, terraform_binary,
                            unused_port)  # noqa: F401 (unused_port is a fixture)

REGION = "us-east-1"
# Non-default values, so the test shows each variable reaching the API and coming back.
VARIABLES = {
    "image_tag": "moto-1",
    "model_variant": "multilingual",  # memory 6144 MB from the variant table
    "timeout_s": 120,
    "reserved_concurrency": 5,
    "provisioned_concurrency": 0,  # moto has no provisioned concurrency
    "ephemeral_storage_mb": 1024,
    "log_retention_days": 14,
    "ecr_keep_images": 3,
}
# What moto does not keep: the second plan re-adds logging_config, and publish = true turns that
# into a new version (unknown until apply) that the alias follows.
EXPECTED_DRIFT = {
    "aws_lambda_function.service[0]": {"logging_config", "version", "qualified_arn", "qualified_invoke_arn"},
    "aws_lambda_alias.live[0]": {"function_version"},
}


def moto_server_command() -> list[str]:
    """The moto_server of this interpreter's environment, or skip saying why."""
    missing = [name for name in ("moto", "flask", "flask_cors", "boto3")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"moto[server] is not installed ({', '.join(missing)} missing): "
                    "pip install -r requirements-dev.txt")
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


@pytest.fixture
def moto_endpoint(unused_port: int, tmp_path: Path) -> Iterator[str]:
    """A moto_server on 127.0.0.1 for this test only, stopped afterwards (started only if terraform can run)."""
    terraform_binary()
    aws_provider_mirror()
    command = [*moto_server_command(), "-H", "127.0.0.1", "-p", str(unused_port)]
    # The module attaches no managed policies, so MOTO_IAM_LOAD_MANAGED_POLICIES is not needed.
    log = (tmp_path / "moto.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"moto_server exited ({server.returncode}): {(tmp_path / 'moto.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", unused_port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto_server did not listen within 30 s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{unused_port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def aws_env(workdir: Path, mirror: Path) -> dict[str, str]:
    """offline_env plus dummy AWS credentials, with the user's own AWS config out of reach."""
    env = offline_env(workdir, mirror)
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
               AWS_EC2_METADATA_DISABLED="true")
    return env


def var_args(endpoint: str) -> list[str]:
    args = ["-var", f"aws_endpoint_url={endpoint}", "-var", f"region={REGION}"]
    for key, value in VARIABLES.items():
        args += ["-var", f"{key}={value}"]
    return args


def tf(args: list[str], module: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = run_terraform([*args, "-no-color"], cwd=module, env=env, timeout=timeout)
    assert result.returncode == 0, f"terraform {args[0]}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def drift(plan_json: dict) -> dict[str, set[str]]:
    """Per resource the plan would change: the attributes that differ or become unknown."""
    changed: dict[str, set[str]] = {}
    for rc in plan_json.get("resource_changes", []):
        change = rc["change"]
        if change["actions"] == ["no-op"]:
            continue
        before, after = change.get("before") or {}, change.get("after") or {}
        unknown = {k for k, v in (change.get("after_unknown") or {}).items() if v is True}
        keys = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} | unknown
        changed[f"{rc['address']} {'/'.join(change['actions'])}"] = keys
    return changed


@pytest.mark.slow
def test_lambda_module_applies_against_moto(moto_endpoint, tmp_path):
    mirror = aws_provider_mirror()
    import boto3

    module = copy_module("lambda", tmp_path)
    env = aws_env(tmp_path, mirror)
    tf(["init", "-backend=false"], module, env)
    tf(["apply", "-auto-approve", *var_args(moto_endpoint)], module, env)
    outputs = {k: v["value"] for k, v in json.loads(tf(["output", "-json"], module, env)).items()}

    def client(service: str):
        return boto3.client(service, endpoint_url=moto_endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    # ---- what moto holds, read with boto3 (not from Terraform's state)
    lam = client("lambda")
    function = lam.get_function(FunctionName="clipserve")
    config = function["Configuration"]
    assert config["PackageType"] == "Image"
    assert config["MemorySize"] == 6144 == outputs["memory_mb"]
    assert config["Timeout"] == 120
    assert config["EphemeralStorage"] == {"Size": 1024}
    assert config["Architectures"] == ["x86_64"]
    assert config["ImageConfigResponse"]["ImageConfig"] == {
        "EntryPoint": ["/opt/venv/bin/python", "-m", "awslambdaric"],
        "Command": ["infra.lambda_handler.handler"],
        "WorkingDirectory": "/app",
    }
    assert config["Environment"]["Variables"] == {"MODEL_VARIANT": "multilingual", "MAX_BODY_BYTES": "6291456",
                                                  "BATCH_MAX_WAIT_MS": "0", "OPENAI_MAX_INPUTS": "512"}
    assert config["Role"].endswith(":role/clipserve-lambda")
    repository_url = outputs["ecr_repository_url"]
    assert function["Code"]["ImageUri"] == outputs["image_uri"] == f"{repository_url}:moto-1"
    assert lam.get_function_concurrency(FunctionName="clipserve")["ReservedConcurrentExecutions"] == 5

    alias = lam.get_alias(FunctionName="clipserve", Name="live")
    assert alias["FunctionVersion"] not in ("$LATEST", ""), "the alias must point at a published version"
    url_config = lam.get_function_url_config(FunctionName="clipserve", Qualifier="live")
    assert url_config["AuthType"] == "AWS_IAM" and url_config["InvokeMode"] == "BUFFERED"
    assert outputs["url"] == url_config["FunctionUrl"] and outputs["url_auth"] == "AWS_IAM"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_policy(FunctionName="clipserve", Qualifier="live")  # no resource-policy grants by default

    log_groups = client("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/clipserve")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in log_groups] == [("/aws/lambda/clipserve", 14)]

    ecr = client("ecr")
    [repo] = ecr.describe_repositories(repositoryNames=["clipserve"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"] is True
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName="clipserve")["lifecyclePolicyText"])["rules"]
    assert [r["selection"]["countNumber"] for r in rules] == [3]

    iam = client("iam")
    trust = iam.get_role(RoleName="clipserve-lambda")["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "lambda.amazonaws.com"}]
    assert iam.list_attached_role_policies(RoleName="clipserve-lambda")["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName="clipserve-lambda")["PolicyNames"] == ["write-own-logs"]
    policy = iam.get_role_policy(RoleName="clipserve-lambda", PolicyName="write-own-logs")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    [statement] = policy["Statement"]
    assert sorted(statement["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"].endswith(":log-group:/aws/lambda/clipserve:*")

    # ---- a second plan: only the drift moto is known to cause (see the module docstring)
    tf(["plan", "-out=second.tfplan", *var_args(moto_endpoint)], module, env)
    second = drift(json.loads(tf(["show", "-json", "second.tfplan"], module, env)))
    assert second == {f"{address} update": keys for address, keys in EXPECTED_DRIFT.items()}, \
        "the second plan must differ only in what moto drops (logging_config)"

    # ---- destroy: nothing may be left behind
    tf(["destroy", "-auto-approve", "-refresh=false", *var_args(moto_endpoint)], module, env)
    assert lam.list_functions()["Functions"] == []
    assert ecr.describe_repositories()["repositories"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == []
    assert client("logs").describe_log_groups()["logGroups"] == []
