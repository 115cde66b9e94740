"""checkov on the Terraform (with this project's Cloud Run policies) and the Dockerfile.

checkov pins many libraries that clash with the service's, so it is not in requirements-dev.txt:
the scan runs when CLIPSERVE_RUN_CHECKOV=1, with checkov from CLIPSERVE_CHECKOV (a path) or PATH,
e.g. from a throwaway venv:

    python -m venv /tmp/checkov && /tmp/checkov/bin/pip install checkov
    CLIPSERVE_RUN_CHECKOV=1 CLIPSERVE_CHECKOV=/tmp/checkov/bin/checkov ./test.sh tests/deploy/test_checkov.py

Every finding is fixed or skipped in the code with `checkov:skip=ID:reason`; the skip comments
themselves are checked on every run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from deploy_support import REPO

SKIP_COMMENT = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?$")
SCANNED = [*sorted((REPO / "terraform").rglob("*.tf")), REPO / "Dockerfile"]


def test_every_checkov_skip_names_a_check_and_a_reason():
    skips = []
    for path in SCANNED:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SKIP_COMMENT.search(line.strip())
            if match:
                reason = (match.group(2) or "").strip()
                assert len(reason) >= 20, f"{path.name}:{number}: skip of {match.group(1)} needs a reason"
                skips.append(match.group(1))
    assert skips, "expected the reviewed skips to be present"


def checkov_binary() -> str:
    if os.environ.get("CLIPSERVE_RUN_CHECKOV") != "1":
        pytest.skip("checkov scan is opt-in: set CLIPSERVE_RUN_CHECKOV=1 (and CLIPSERVE_CHECKOV=path/to/checkov)")
    found = os.environ.get("CLIPSERVE_CHECKOV") or shutil.which("checkov")
    if not found:
        pytest.fail("CLIPSERVE_RUN_CHECKOV=1 but no checkov binary (set CLIPSERVE_CHECKOV)")
    return found


def scan(*args: str) -> list[dict]:
    result = subprocess.run([checkov_binary(), *args, "--skip-download", "--output", "json",
                             "--compact"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    start = result.stdout.find("{") if result.stdout.lstrip().startswith("{") else result.stdout.find("[")
    assert start >= 0, result.stdout[-2000:] + result.stderr[-2000:]
    reports = json.loads(result.stdout[start:])
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict]) -> list[str]:
    return [f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for report in reports for c in report.get("results", {}).get("failed_checks", [])]


def test_checkov_terraform_has_no_unreviewed_findings():
    reports = scan("--directory", "terraform", "--framework", "terraform",
                   "--external-checks-dir", "terraform/checkov")
    assert failures(reports) == []
    passed = [c["check_id"] for r in reports for c in r.get("results", {}).get("passed_checks", [])]
    assert {"CKV2_CLIPSERVE_1", "CKV2_CLIPSERVE_2", "CKV2_CLIPSERVE_3"} <= set(passed), \
        "the project's Cloud Run policies must have run"


def test_checkov_dockerfile_has_no_unreviewed_findings():
    assert failures(scan("--file", "Dockerfile", "--framework", "dockerfile")) == []
