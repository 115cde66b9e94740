"""deploy.sh: the dry run prints the whole deployment; a real run executes exactly that and maps
each kind of failure to its exit code.

Real runs use stand-in gcloud / aws / docker / terraform scripts on PATH that log their
arguments, answer the few queries deploy.sh makes, and fail on request (FAKE_FAIL glob).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy_support import REPO

DEPLOY = REPO / "deploy.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="deploy.sh needs bash")


def deploy(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False, cwd=REPO)


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


# ---------------------------------------------------------------- dry runs

def test_cloudrun_dry_run_prints_every_step_in_order():
    result = deploy("cloudrun", "--project", "my-proj", "--region", "europe-west4", "--tag", "v1", "--dry-run")
    assert result.returncode == 0, result.stderr
    tf = f"terraform -chdir={REPO}/terraform/cloudrun"
    image = "europe-west4-docker.pkg.dev/my-proj/clipserve/clipserve:v1"
    common = "-var project_id=my-proj -var region=europe-west4 -var name=clipserve"
    assert commands(result.stdout) == [
        "gcloud auth print-access-token",
        "gcloud auth application-default print-access-token",
        "gcloud services enable run.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com "
        "iam.googleapis.com --project my-proj",
        f"{tf} init -input=false",
        f"{tf} apply -input=false -auto-approve -target=google_artifact_registry_repository.images {common}",
        f"gcloud builds submit {REPO} --project my-proj --region europe-west4 --config cloudbuild.yaml",
        f"{tf} apply -input=false -auto-approve {common} -var image={image} -var model_variant=english "
        "-var allow_unauthenticated=false",
        f"{tf} output -raw url",
        "gcloud auth print-identity-token",
        f"{REPO}/infra/smoke.sh <url> --token <identity-token> --expect-dim 512 --wait 300",
    ]
    # Cloud Build gets BuildKit (cache mounts) and both variants baked by default.
    assert '"DOCKER_BUILDKIT=1"' in result.stdout
    assert '"MODEL_VARIANTS=english multilingual"' in result.stdout
    assert f'"--tag", "{image}"' in result.stdout


def test_lambda_dry_run_prints_every_step_in_order():
    result = deploy("lambda", "--variant", "multilingual", "--region", "eu-west-1", "--tag", "v2", "--dry-run",
                    env={"AWS_ACCESS_KEY_ID": "", "AWS_REGION": ""})
    assert result.returncode == 0, result.stderr
    tf = f"terraform -chdir={REPO}/terraform/lambda"
    registry = "<account>.dkr.ecr.eu-west-1.amazonaws.com"
    assert commands(result.stdout) == [
        "aws sts get-caller-identity --query Account --output text",
        "docker info",
        "docker buildx version",
        f"{tf} init -input=false",
        f"{tf} apply -input=false -auto-approve -target=aws_ecr_repository.images "
        "-target=aws_ecr_lifecycle_policy.images -var region=eu-west-1 -var name=clipserve",
        f"aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin {registry}",
        f"docker buildx build {REPO} --platform linux/amd64 --provenance=false "
        "--build-arg 'MODEL_VARIANTS=english multilingual' --build-arg MODEL_VARIANT=multilingual "
        f"--tag {registry}/clipserve:v2 --push",
        f"{tf} apply -input=false -auto-approve -var region=eu-west-1 -var name=clipserve -var image_tag=v2 "
        "-var model_variant=multilingual -var function_url_auth=AWS_IAM",
        f"{tf} output -raw url",
        "aws configure export-credentials --format env",
        f"{REPO}/infra/smoke.sh <url> --aws-sigv4 eu-west-1 --expect-dim 640 --wait 300",
    ]


def test_public_and_single_variant_options_reach_the_commands():
    result = deploy("lambda", "--public", "--bake", "english", "--tag", "v3", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert any("--build-arg MODEL_VARIANTS=english --build-arg MODEL_VARIANT=english" in c for c in lines)
    assert any(c.endswith("-var function_url_auth=NONE") for c in lines)
    assert lines[-1].endswith("smoke.sh <url> --expect-dim 512 --wait 300"), "a public URL needs no signature"
    assert "BAKE_FLAGS" not in result.stdout, "unpinned weights only when asked"

    result = deploy("lambda", "--allow-unpinned", "--tag", "v3", "--dry-run")
    build = next(c for c in commands(result.stdout) if c.startswith("docker buildx build"))
    assert "--build-arg BAKE_FLAGS=--allow-unpinned" in build

    result = deploy("cloudrun", "--project", "p", "--public", "--builder", "buildx", "--tag", "v3", "--dry-run")
    lines = commands(result.stdout)
    assert "gcloud auth configure-docker us-central1-docker.pkg.dev --quiet" in lines
    assert any(c.startswith("docker buildx build") and c.endswith("--push") for c in lines)
    assert any(c.endswith("-var allow_unauthenticated=true") for c in lines)
    assert "gcloud auth print-identity-token" not in lines


def test_several_models_are_baked_and_passed_as_a_list():
    result = deploy("lambda", "--variant", "english,siglip2-b16", "--bake", "english,siglip2-b16,multilingual",
                    "--tag", "v4", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    build = next(c for c in lines if c.startswith("docker buildx build"))
    assert "'MODEL_VARIANTS=english siglip2-b16 multilingual'" in build and "MODEL_VARIANT=english " in build
    apply = next(c for c in lines if "-var image_tag=v4" in c)
    assert "-var model_variant=english" in apply and """-var 'models=["english","siglip2-b16"]'""" in apply
    assert lines[-1].endswith("--expect-dim 512 --wait 300")  # the default model's dimension
    assert deploy("lambda", "--variant", "siglip2-b16", "--bake", "siglip2-b16", "--tag", "v4",
                  "--dry-run").stdout.splitlines()[-1].endswith("--expect-dim 768 --wait 300")
    for args, message in ((["--variant", "english,klingon"], "'klingon' is not a variant"),
                          (["--variant", "english,english"], "listed twice"),
                          (["--variant", "english,siglip2-b16"], "not in --bake")):
        refused = deploy("--dry-run", "cloudrun", *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_the_scripts_variant_list_is_the_registrys():
    from models import registry

    line = next(l for l in (REPO / "deploy.sh").read_text().splitlines() if l.startswith("VARIANTS="))
    assert sorted(line.split("=", 1)[1].strip('"').split()) == registry.names()


def test_dry_run_without_a_project_asks_gcloud_for_it():
    result = deploy("cloudrun", "--tag", "v1", "--dry-run", env={"GOOGLE_CLOUD_PROJECT": ""})
    assert result.returncode == 0
    assert commands(result.stdout)[2] == "gcloud config get-value project"
    assert "-var project_id=<project>" in result.stdout


@pytest.mark.parametrize("args,message", [
    ([], "cloudrun or lambda"),
    (["azure"], "unknown argument"),
    (["cloudrun", "--variant", "klingon"], "--variant"),
    (["cloudrun", "--variant", "multilingual", "--bake", "english"], "not in --bake"),
    (["lambda", "--builder", "cloudbuild"], "docker buildx"),
    (["cloudrun", "--region"], "needs a value"),
    (["cloudrun", "--tag", "bad tag"], "--tag"),
])
def test_bad_usage_exits_2(args, message):
    result = deploy("--dry-run", *args)  # --dry-run first: a usage slip must never start a real deploy
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_cloudrun_canary_smoke_tests_the_tagged_revision_before_traffic_moves():
    result = deploy("cloudrun", "--project", "p", "--tag", "v2", "--variant", "multilingual", "--canary", "5",
                    "--dry-run")
    assert result.returncode == 0, result.stderr
    tf = f"terraform -chdir={REPO}/terraform/cloudrun"
    app = ("-var project_id=p -var region=us-central1 -var name=clipserve -var image=us-central1-docker.pkg.dev/p/"
           "clipserve/clipserve:v2 -var model_variant=multilingual -var allow_unauthenticated=false")
    printed = commands(result.stdout)
    smoke = printed.index(f"{REPO}/infra/smoke.sh <canary_url> --token <identity-token> --expect-dim 640 --wait 300")
    moved = printed.index(f"{tf} apply -input=false -auto-approve {app} -var stable_revision=<stable> "
                          "-var canary_percent=5")
    zero = printed.index(f"{tf} apply -input=false -auto-approve {app} -var stable_revision=<stable> "
                         "-var canary_percent=0")
    assert zero < smoke < moved == len(printed) - 1
    assert f"{tf} output -raw url" not in printed  # the service's main URL keeps serving the stable revision
    assert "5% of cloudrun traffic to the new one, at <canary_url> alone; the rest stays on <stable>" in result.stdout


def test_lambda_canary_smoke_tests_the_canary_alias_before_live_is_weighted():
    result = deploy("lambda", "--tag", "v2", "--canary", "10", "--dry-run")
    assert result.returncode == 0, result.stderr
    tf = f"terraform -chdir={REPO}/terraform/lambda"
    app = ("-var region=us-east-1 -var name=clipserve -var image_tag=v2 -var model_variant=english "
           "-var function_url_auth=AWS_IAM")
    assert commands(result.stdout)[-6:] == [
        f"{tf} output -raw live_version",
        f"{tf} apply -input=false -auto-approve {app} -var stable_version=<stable> -var canary_percent=0",
        f"{tf} output -raw canary_url",
        "aws configure export-credentials --format env",
        f"{REPO}/infra/smoke.sh <canary_url> --aws-sigv4 us-east-1 --expect-dim 512 --wait 300",
        f"{tf} apply -input=false -auto-approve {app} -var stable_version=<stable> -var canary_percent=10",
    ]


@pytest.mark.parametrize("args,expected", [
    (("cloudrun", "--project", "p", "--promote"),
     ["gcloud run services update-traffic clipserve --region us-central1 --project p --to-latest",
      "gcloud run services update-traffic clipserve --region us-central1 --project p --remove-tags stable"]),
    (("cloudrun", "--project", "p", "--region", "europe-west4", "--rollback"),
     [f"terraform -chdir={REPO}/terraform/cloudrun output -raw stable_revision",
      "gcloud run services update-traffic clipserve --region europe-west4 --project p --to-revisions <stable>=100"]),
    (("lambda", "--name", "clip", "--promote"),
     [f"terraform -chdir={REPO}/terraform/lambda output -raw version",
      "aws lambda update-alias --function-name clip --name live --function-version <version> "
      "--routing-config 'AdditionalVersionWeights={}' --region us-east-1"]),
    (("lambda", "--region", "eu-west-1", "--rollback"),
     [f"terraform -chdir={REPO}/terraform/lambda output -raw live_version",
      "aws lambda update-alias --function-name clipserve --name live --function-version <version> "
      "--routing-config 'AdditionalVersionWeights={}' --region eu-west-1"]),
])
def test_promote_and_rollback_print_the_platforms_own_commands(args, expected):
    result = deploy(*args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert commands(result.stdout) == expected  # no build, no terraform apply: only the traffic moves


@pytest.mark.parametrize("args,message", [
    (("cloudrun", "--canary", "0"), "--canary: a percent from 1 to 99"),
    (("cloudrun", "--canary", "100"), "--canary: a percent from 1 to 99"),
    (("lambda", "--canary", "5%"), "--canary: a percent from 1 to 99"),
    (("cloudrun", "--canary", "5", "--promote"), "--canary deploys"),
    (("lambda", "--promote", "--rollback"), "one at a time"),
])
def test_canary_usage_mistakes_exit_2(args, message):
    result = deploy("--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr


# ---------------------------------------------------------------- real runs with stand-in tools

FAKE_TOOL = r"""#!/usr/bin/env bash
# Stand-in for a cloud CLI: log the call, answer queries, fail when FAKE_FAIL matches.
line="$(basename "$0") $*"
printf '%s\n' "$line" >> "$FAKE_LOG"
# shellcheck disable=SC2053
if [ -n "${FAKE_FAIL:-}" ] && [[ "$line" == $FAKE_FAIL ]]; then echo "fake failure: $line" >&2; exit 1; fi
case "$line" in
  "gcloud config get-value project") echo fake-project ;;
  "gcloud auth print-identity-token") echo fake-id-token ;;
  "aws sts get-caller-identity"*) echo 123456789012 ;;
  "aws ecr get-login-password"*) echo fake-password ;;
  "docker login"*) cat > /dev/null ;;
  "terraform "*"output -raw url") echo "$FAKE_URL" ;;
  "terraform "*"output -raw canary_url") echo "$FAKE_URL/canary" ;;
  "terraform "*"output -raw revision") echo clipserve-00007-abc ;;
  "terraform "*"output -raw stable_revision") echo clipserve-00007-abc ;;
  "terraform "*"output -raw live_version") echo 7 ;;
  "terraform "*"output -raw version") echo 8 ;;
esac
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path) -> dict[str, str]:
    """PATH with stand-in gcloud/aws/docker/terraform before the real tools; returns the env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # curl too where the machine has none (deploy.sh checks for it; these runs skip the smoke test)
    for tool in ("gcloud", "aws", "docker", "terraform", *(["curl"] if shutil.which("curl") is None else [])):
        path = bin_dir / tool
        path.write_text(FAKE_TOOL)
        path.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_URL": "http://127.0.0.1:9",
            "GOOGLE_CLOUD_PROJECT": "", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s"}


def logged(env: dict[str, str]) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


def normalise(command: str) -> str:
    """The dry run's view of a command: placeholders where the fakes answered."""
    return (command.replace("fake-project", "<project>").replace("123456789012", "<account>")
            .replace("'MODEL_VARIANTS=english multilingual'", "MODEL_VARIANTS=english multilingual"))


@pytest.mark.parametrize("target,extra", [("cloudrun", ()), ("lambda", ()), ("cloudrun", ("--canary", "5")),
                                          ("lambda", ("--canary", "5")), ("cloudrun", ("--rollback",)),
                                          ("lambda", ("--promote",))])
def test_a_real_run_executes_what_the_dry_run_printed(fake_tools, target, extra):
    args = (target, "--tag", "v9", "--skip-smoke", *extra)
    printed = commands(deploy(*args, "--dry-run", env=fake_tools).stdout)
    result = deploy(*args, env=fake_tools)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = logged(fake_tools)
    # the dry run shows the pipeline and the config file as such; the real run runs them
    expected = []
    for command in printed:
        if " | docker login " in command:
            expected += command.split(" | ")
        elif command.startswith("gcloud builds submit"):
            expected.append(command.rsplit(" ", 1)[0])
        else:
            expected.append(command)
    expected = [c for c in expected if not c.startswith("aws configure")]
    actual = [normalise(c) for c in executed]
    answers = {"clipserve-00007-abc": "<stable>", "http://127.0.0.1:9/canary": "<canary_url>"}
    for answer, placeholder in answers.items():
        actual = [c.replace(answer, placeholder) for c in actual]
    version = {"--promote": "8", "--rollback": "7"}.get(extra[0] if extra else "", None)
    if target == "lambda" and version:
        actual = [c.replace(f"--function-version {version} ", "--function-version <version> ")
                  .replace("AdditionalVersionWeights={}", "'AdditionalVersionWeights={}'") for c in actual]
    if target == "lambda" and extra[:1] == ("--canary",):
        actual = [c.replace("stable_version=7 ", "stable_version=<stable> ") for c in actual]
    for i, command in enumerate(actual):
        if command.startswith("gcloud builds submit"):
            assert command.split(" --config ")[1].endswith("/cloudbuild.yaml")
            actual[i] = command.split(" --config ")[0] + " --config"
    expected = [normalise(c) for c in expected]
    for i, command in enumerate(expected):  # the two sides of a pipeline start in either order
        if command.startswith("aws ecr get-login-password") and set(actual[i:i + 2]) == set(expected[i:i + 2]):
            actual[i:i + 2] = expected[i:i + 2]
    assert actual == expected


@pytest.mark.parametrize("target,fail_on,code", [
    ("cloudrun", "gcloud auth print-access-token*", 4),
    ("cloudrun", "gcloud auth application-default*", 4),
    ("cloudrun", "gcloud builds submit*", 5),
    ("cloudrun", "terraform *apply*", 6),
    ("cloudrun", "terraform *init*", 6),
    ("lambda", "aws sts get-caller-identity*", 4),
    ("lambda", "docker buildx build*", 5),
    ("lambda", "terraform *-var image_tag=*", 6),
])
def test_failures_have_distinct_exit_codes(fake_tools, target, fail_on, code):
    result = deploy(target, "--tag", "v9", "--skip-smoke", env={**fake_tools, "FAKE_FAIL": fail_on})
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("deploy: ")


def test_missing_tools_are_named_before_anything_runs(fake_tools, tmp_path):
    Path(fake_tools["PATH"].split(":")[0], "terraform").unlink()
    Path(fake_tools["PATH"].split(":")[0], "gcloud").unlink()
    only_basics = tmp_path / "basics"
    only_basics.mkdir()
    for tool in ("bash", "git", "date", "sed", "dirname", "mktemp", "rm", "cat", "curl"):
        found = shutil.which(tool)
        if found:
            (only_basics / tool).symlink_to(found)
    env = {**fake_tools, "PATH": f"{fake_tools['PATH'].split(':')[0]}:{only_basics}"}
    result = deploy("cloudrun", "--project", "p", "--tag", "v9", env=env)
    assert result.returncode == 3
    assert "missing tools: gcloud terraform" in result.stderr
    assert logged(fake_tools) == []


class _BrokenService(BaseHTTPRequestHandler):
    """Healthy, right dimension, but /embed/text is missing: the smoke test must fail."""

    def do_GET(self):  # noqa: N802
        payload = {"status": "ok"} if self.path == "/health" else {"model": {"dim": 512}}
        self._send(200, payload)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(404, {"error": {"code": "not_found", "message": "no"}})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="smoke.sh needs curl")
def test_a_failed_smoke_test_exits_7(fake_tools):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BrokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**fake_tools, "FAKE_URL": f"http://127.0.0.1:{server.server_address[1]}"}
        result = deploy("cloudrun", "--project", "p", "--tag", "v9", env=env)
    finally:
        server.shutdown()
    assert result.returncode == 7, result.stdout + result.stderr
    assert "FAIL text" in result.stderr
    assert "fake-id-token" not in result.stdout, "the identity token must not be printed"


def _index_folder(tmp_path: Path, variant: str) -> Path:
    folder = tmp_path / "shop" / "v2"
    folder.mkdir(parents=True)
    (folder / "vectors.faiss").write_bytes(b"\0" * 3_000_000)
    (folder / "manifest.json").write_text(json.dumps({"model": {"variant": variant, "dim": 512}}, indent=2))
    return folder


def test_lambda_index_is_baked_into_the_image_and_counted_in_memory(tmp_path):
    folder = _index_folder(tmp_path, "english")
    result = deploy("lambda", "--index", str(folder), "--tag", "v9", "--dry-run")
    assert result.returncode == 0, result.stderr
    steps = commands(result.stdout)
    build = next(c for c in steps if c.startswith("docker buildx build"))
    assert "--build-arg INDEX_DIR=/index" in build and f"--build-context search-index={folder}" in build
    assert any(c.endswith("-var index_mib=3") for c in steps if " apply " in c and "image_tag=v9" in c)
    assert not any(c.startswith("cp ") for c in steps)  # nothing is copied into the repository


def test_an_index_on_cloud_build_is_refused_for_the_bucket_way(tmp_path):
    folder = _index_folder(tmp_path, "english")
    result = deploy("cloudrun", "--project", "p", "--index", str(folder), "--dry-run")
    assert result.returncode == 2 and "--builder buildx" in result.stderr and "index_bucket" in result.stderr
    result = deploy("cloudrun", "--project", "p", "--builder", "buildx", "--index", str(folder), "--dry-run")
    assert result.returncode == 0 and f"--build-context search-index={folder}" in result.stdout


def test_an_index_for_another_variant_or_no_index_is_refused_before_anything_runs(tmp_path):
    folder = _index_folder(tmp_path, "multilingual")
    result = deploy("lambda", "--index", str(folder), "--dry-run")
    assert result.returncode == 2 and "was not built with variant english" in result.stderr
    assert commands(result.stdout) == []
    result = deploy("lambda", "--index", str(tmp_path), "--dry-run")
    assert result.returncode == 2 and "no manifest.json" in result.stderr


def test_gpu_selects_the_cuda_build_and_the_l4_on_cloud_run_only():
    result = deploy("cloudrun", "--project", "p", "--gpu", "--tag", "v5", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert '"TORCH_INDEX=https://download.pytorch.org/whl/cu126"' in result.stdout
    assert any(c.endswith("-var gpu_type=nvidia-l4") for c in commands(result.stdout))
    plain = deploy("cloudrun", "--project", "p", "--tag", "v5", "--dry-run")
    assert "TORCH_INDEX" not in plain.stdout and "gpu_type" not in plain.stdout
    refused = deploy("lambda", "--gpu", "--dry-run")
    assert refused.returncode == 2 and "Lambda has no GPUs" in refused.stderr and commands(refused.stdout) == []
