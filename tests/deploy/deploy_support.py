"""Running terraform offline from tests: find the binary and the local AWS provider mirror.

Nothing here touches the network: checkpoint calls are off and providers come only from a
filesystem mirror. Tests that need terraform or the mirror skip with the reason when absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"

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
