"""bench/locustfile.py runs headless against the real gunicorn (tiny bundles, a small index): every workload is sent
and every request succeeds, its answers checked by the file itself."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from servers import gunicorn

REPO = Path(__file__).resolve().parents[2]
USERS = ["SearchApp", "OneText", "TextBatch", "ImageUpload", "ImageBase64", "SearchText"]


def test_every_workload_runs_headless_and_succeeds(tiny_model_dir, tmp_path):
    from batch.cli import main

    (tmp_path / "items.csv").write_text("id,text\n" + "".join(f"i{i},item number {i}\n" for i in range(20)))
    index = tmp_path / "idx" / "v1"
    assert main(["index", "build", "--input", str(tmp_path / "items.csv"), "--output", str(index), "--local",
                 "--model-dir", str(tiny_model_dir)]) == 0
    with gunicorn(tiny_model_dir, tmp_path / "gunicorn.log", INDEX_DIR=str(index)) as server:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--host", server.url, "--headless",
             "-u", str(len(USERS)), "-r", str(len(USERS)), "-t", "8s", "--csv", str(tmp_path / "run"),
             "--only-summary", "--exit-code-on-error", "1", *USERS],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f) if row["Name"] != "Aggregated"}
    for name in ("embed one text", "embed 32 texts", "embed one image (upload)", "embed one image (base64)",
                 "search by text"):
        assert int(rows[name]["Request Count"]) > 0, (name, rows.keys())
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
