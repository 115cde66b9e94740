"""Nothing lost, nothing twice: SIGKILL then resume, torn last lines, shards and merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from batch_fakes import BROKEN_IMAGE, FakeService, fake_image_vector, fake_text_vector
from batch_helpers import read_jsonl, run_cli, vector, write_csv, write_jsonl

from batch.export import npy_paths

REPO = Path(__file__).resolve().parents[2]


def text_rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"row-{i:03d}", "text": f"caption number {i}"} for i in range(n)]


def assert_each_id_once_with_right_vector(out: Path, rows: list[dict[str, str]]) -> None:
    records = read_jsonl(out)  # fails on a torn or corrupt line
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in records}
    for row in rows:
        np.testing.assert_array_equal(vector(by_id[row["id"]], "text_embedding"), fake_text_vector(row["text"]))


def test_sigkill_mid_run_then_rerun_gives_every_id_exactly_once(tmp_path):
    rows = text_rows(100)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "emb.jsonl"
    with FakeService(delay_s=0.1) as svc:  # 50 requests, 2 at a time: about 2.5 s in which to kill it
        cmd = [
            sys.executable,
            "-m",
            "batch",
            "embed",
            "--input",
            str(src),
            "--output",
            str(out),
            "--endpoint",
            svc.url,
            "--batch-size",
            "2",
            "--concurrency",
            "2",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
        killed_at = out.read_bytes().count(b"\n")
        assert 10 <= killed_at < len(rows), "the job must be killed mid-run"

        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["already_done"] >= killed_at - 1  # at most a torn last line is redone
    assert summary["already_done"] + summary["written"] == len(rows)
    assert_each_id_once_with_right_vector(out, rows)


def test_a_torn_last_line_is_dropped_and_its_row_redone(tmp_path, capsys):
    rows = text_rows(10)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "emb.jsonl"
    with FakeService() as svc:
        args = ("embed", "--input", src, "--output", out, "--endpoint", svc.url, "--batch-size", "3")
        assert run_cli(capsys, *args)[0] == 0
        data = out.read_bytes()
        lines = data.splitlines(keepends=True)
        out.write_bytes(b"".join(lines[:6]) + lines[6][: len(lines[6]) // 2])  # killed while writing row 6
        status, summary = run_cli(capsys, *args)
    assert status == 0 and summary["already_done"] == 6 and summary["written"] == 4
    assert_each_id_once_with_right_vector(out, rows)


def test_rerunning_a_finished_job_sends_nothing(tmp_path, capsys):
    rows = text_rows(5)
    src = write_csv(tmp_path / "in.csv", rows)
    with FakeService() as svc:
        args = ("embed", "--input", src, "--output", tmp_path / "o.jsonl", "--endpoint", svc.url)
        assert run_cli(capsys, *args)[0] == 0
        sent = len(svc.requests)
        status, summary = run_cli(capsys, *args)
        assert status == 0 and summary["written"] == 0 and summary["already_done"] == 5
        assert len(svc.requests) == sent


@pytest.mark.parametrize("shard_by", ["position", "id"])
def test_shards_cover_every_id_once_and_merge_restores_input_order(tmp_path, capsys, monkeypatch, shard_by):
    rows = [{"id": f"item-{(i * 7919) % 101}", "text": f"text {i}", "image": f"img{i}" * 3} for i in range(31)]
    rows[4]["image"] = BROKEN_IMAGE
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "emb.jsonl"
    with FakeService() as svc:
        for index in range(3):  # as Cloud Run Jobs runs the tasks
            monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", str(index))
            monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "3")
            status, summary = run_cli(
                capsys,
                "embed",
                "--input",
                src,
                "--output",
                out,
                "--endpoint",
                svc.url,
                "--shard-by",
                shard_by,
                "--batch-size",
                "4",
            )
            assert status == 0 and summary["shard"] == f"{index}/3"
    parts = sorted(tmp_path.glob("emb.shard-*-of-00003.jsonl"))
    assert len(parts) == 3 and not out.exists()
    ids_per_part = [[r["id"] for r in read_jsonl(p)] for p in parts]
    assert all(ids_per_part)  # every shard got work
    assert sorted(sum(ids_per_part, [])) == sorted(r["id"] for r in rows)  # each id in exactly one part

    monkeypatch.delenv("CLOUD_RUN_TASK_INDEX")
    monkeypatch.delenv("CLOUD_RUN_TASK_COUNT")
    status, report = run_cli(capsys, "merge", "--input", src, "--output", out)
    assert status == 0 and report["rows"] == len(rows) and report["missing"] == 0
    merged = read_jsonl(out)
    assert [r["id"] for r in merged] == [r["id"] for r in rows]
    for row, rec in zip(rows, merged):
        np.testing.assert_array_equal(vector(rec, "text_embedding"), fake_text_vector(row["text"]))

    # The same parts as NumPy: one matrix per modality in input order, NaN where a row has no vector.
    status, report = run_cli(capsys, "merge", "--input", src, "--output", tmp_path / "emb.npy")
    assert status == 0
    paths = npy_paths(tmp_path / "emb.npy")
    ids = paths["ids"].read_text().splitlines()
    texts, images = np.load(paths["text"]), np.load(paths["image"])
    assert ids == [r["id"] for r in rows] and texts.shape == (31, 8) and images.dtype == np.float32
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(texts[i], fake_text_vector(row["text"]))
        if row["image"] == BROKEN_IMAGE:
            assert np.isnan(images[i]).all()
        else:
            np.testing.assert_array_equal(images[i], fake_image_vector(row["image"]))


def test_merge_refuses_when_a_row_is_missing(tmp_path, capsys):
    rows = text_rows(6)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "emb.jsonl"
    with FakeService() as svc:
        for index in range(2):
            assert (
                run_cli(
                    capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url, "--shard", f"{index}/2"
                )[0]
                == 0
            )
    part = tmp_path / "emb.shard-00001-of-00002.jsonl"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[1:]))  # lose one row
    status, _ = run_cli(capsys, "merge", "--input", src, "--output", out)
    assert status == 3 and not out.exists()
    status, report = run_cli(capsys, "merge", "--input", src, "--output", out, "--allow-missing")
    assert status == 0 and report["missing"] == 1 and len(read_jsonl(out)) == 5


def test_merge_says_which_part_is_missing(tmp_path, capsys, caplog):
    rows = text_rows(4)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "emb.jsonl"
    with FakeService() as svc:
        assert (
            run_cli(capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url, "--shard", "0/2")[0] == 0
        )
    status, _ = run_cli(capsys, "merge", "--input", src, "--output", out)
    assert status == 1 and "missing part files for shards [1] of 2" in caplog.text


def test_unsharded_npy_output_is_written_when_the_job_completes(tmp_path, capsys):
    rows = text_rows(7)
    src = write_csv(tmp_path / "in.csv", rows)
    with FakeService() as svc:
        status, summary = run_cli(
            capsys, "embed", "--input", src, "--output", tmp_path / "e.npy", "--endpoint", svc.url, "--batch-size", "3"
        )
    assert status == 0
    paths = npy_paths(tmp_path / "e.npy")
    assert summary["files"] == [str(paths["text"]), str(paths["ids"])]
    texts = np.load(paths["text"])
    assert paths["ids"].read_text().splitlines() == [r["id"] for r in rows]
    np.testing.assert_array_equal(texts, np.stack([fake_text_vector(r["text"]) for r in rows]))


def test_retry_errors_redoes_only_the_failed_rows(tmp_path, capsys):
    rows = [{"id": str(i), "image": BROKEN_IMAGE if i in (2, 5) else f"img{i}"} for i in range(8)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "o.jsonl"
    with FakeService() as svc:
        args = ("embed", "--input", src, "--output", out, "--endpoint", svc.url, "--batch-size", "3")
        assert run_cli(capsys, *args)[0] == 0
        assert {r["id"] for r in read_jsonl(out) if r["error"]} == {"2", "5"}
        svc.requests.clear()
        status, summary = run_cli(capsys, *args, "--retry-errors")
        sent = sorted(im for _, body in svc.requests for im in body["images"])
    assert status == 0 and summary["already_done"] == 6 and summary["written"] == 2
    assert sent == [BROKEN_IMAGE, BROKEN_IMAGE]  # only the failed rows went out again
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r["id"] for r in rows)


def test_the_same_command_twice_at_once_is_refused(tmp_path, capsys, caplog):
    from batch.output import exclusive

    src = write_csv(tmp_path / "in.csv", text_rows(3))
    out = tmp_path / "o.jsonl"
    with FakeService() as svc:
        with exclusive(out):  # as if another run were writing o.jsonl
            status, _ = run_cli(capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url)
            assert status == 1 and "another clipserve-batch process is writing it" in caplog.text
            assert svc.requests == [] and (not out.exists() or out.read_text() == "")
        status, summary = run_cli(capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url)
    assert status == 0 and summary["written"] == 3
