"""Running terraform offline from tests: find the binary and the local AWS provider mirror.

Nothing here touches the network: checkpoint calls are off and providers come only from a
filesystem mirror. Tests that need terraform or the mirror skip with the reason when absent.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Where the hashicorp/aws mirror lies on the project's machines; CLIPSERVE_TF_PLUGIN_DIR overrides.
_MIRROR_CANDIDATES = ("/opt/tf-plugins", "~/.terraform.d/plugins", "/usr/share/terraform/plugins")


def terraform_binary() -> str:
    """Path of terraform, or skip the test saying why."""
    found = shutil.which("terraform")
    if not found:
        pytest.skip("terraform is not installed on this machine (CI without it runs the python-hcl2 checks only)")
    return found


def aws_provider_mirror() -> Path:
    """A filesystem mirror holding registry.terraform.io/hashicorp/aws, or skip the test."""
    candidates = [os.environ.get("CLIPSERVE_TF_PLUGIN_DIR", ""), *_MIRROR_CANDIDATES]
    for candidate in filter(None, candidates):
        root = Path(candidate).expanduser()
        if (root / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return root
    pytest.skip("no local mirror of the hashicorp/aws provider (set CLIPSERVE_TF_PLUGIN_DIR); "
                "terraform cannot download it offline")


def offline_env(workdir: Path, mirror: Path | None = None) -> dict[str, str]:
    """Environment that keeps terraform off the network (and away from the user's own CLI config)."""
    config = workdir / "offline.tfrc"
    lines = ["disable_checkpoint = true"]
    if mirror is not None:
        lines += ["provider_installation {", f'  filesystem_mirror {{ path = "{mirror}" }}', "}"]
    config.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env.update(TF_CLI_CONFIG_FILE=str(config), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1",
               TF_INPUT="0")
    env.pop("TF_DATA_DIR", None)
    return env


def run_terraform(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180,
                  stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run terraform without colour; the caller asserts on returncode and output."""
    return subprocess.run([terraform_binary(), *args], cwd=cwd, env=env, input=stdin, text=True,
                          capture_output=True, timeout=timeout, check=False)


def copy_module(name: str, dest: Path, files: tuple[str, ...] | None = None) -> Path:
    """Copy terraform/<name> (or only `files` of it) into dest, leaving the checkout untouched."""
    source = TERRAFORM_DIR / name
    target = dest / name
    if files is None:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    else:
        target.mkdir(parents=True)
        for file in files:
            shutil.copy2(source / file, target / file)
    return target


# ---------------------------------------------------------------- reading the Dockerfile (no engine here)

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped per build stage (each starts with FROM)."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def stage_named(name: str) -> list[tuple[str, str]]:
    for stage in stages():
        if stage[0][1].lower().endswith(f" as {name}"):
            return stage
    raise AssertionError(f"no stage named {name}")


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for kind, args in stage:
        if kind == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                values[key] = value
    return values


# ---------------------------------------------------------------- .dockerignore, as docker build applies it

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching (Go filepath.Match plus '**'): '*' stays within one path segment."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def excluded_from_context(path: str) -> bool:
    """Whether `docker build` leaves path out: the last matching rule wins; a rule on a parent applies."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released).

    A fixture here rather than in a tests/deploy/conftest.py: another area's tests import
    `conftest` by name, and a second conftest module on sys.path would shadow theirs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
