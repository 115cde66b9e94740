"""The client's py.typed promise: the package type-checks under mypy --strict (its pyproject's settings)."""

from __future__ import annotations

import subprocess
import sys

from servers import REPO


def test_the_client_package_is_strictly_typed():
    checked = subprocess.run([sys.executable, "-m", "mypy", "src"], cwd=REPO / "clients" / "python",
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "Success" in checked.stdout
