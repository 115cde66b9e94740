"""clipserve-batch against a fake service: answers land on the right rows, retries lose nothing,
a bad row costs only itself, credentials are sent, local files are read here."""

from __future__ import annotations

import base64
import sys

import numpy as np
import pytest
from batch_fakes import (
    BROKEN_IMAGE,
    POISON_TEXT,
    REJECTED_TEXT,
    FakeService,
    fake_cosine,
    fake_image_vector,
    fake_text_vector,
)
from batch_helpers import read_jsonl, run_cli, vector, write_csv, write_jsonl

IMG = [base64.b64encode(f"image-{i}".encode()).decode() for i in range(40)]


@pytest.fixture()
def service():
    with FakeService() as svc:
        yield svc


def mixed_rows(n: int = 20) -> list[dict[str, str]]:
    """Text only, image only, both, a broken image with text, nothing at all."""
    rows = []
    for i in range(n):
        kind = i % 5
        text = f"caption {i}" if kind in (0, 2, 3) else ""
        image = IMG[i] if kind in (1, 2) else BROKEN_IMAGE if kind == 3 else ""
        rows.append({"id": f"r{i}", "text": text, "image": image})
    return rows


def test_embed_writes_the_services_vectors_on_the_right_rows(tmp_path, capsys, service):
    rows = mixed_rows(20)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "emb.jsonl"
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        out,
        "--endpoint",
        service.url,
        "--batch-size",
        "4",
        "--concurrency",
        "3",
    )
    assert status == 0 and summary["complete"] and summary["written"] == 20
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]  # input order, each id once
    for row, rec in zip(rows, records):
        if row["text"]:
            np.testing.assert_array_equal(vector(rec, "text_embedding"), fake_text_vector(row["text"]))
        else:
            assert rec["text_embedding"] is None
        if row["image"] and row["image"] != BROKEN_IMAGE:
            np.testing.assert_array_equal(vector(rec, "image_embedding"), fake_image_vector(row["image"]))
            assert rec["error"] is None
        elif row["image"] == BROKEN_IMAGE:
            assert rec["image_embedding"] is None and rec["error"]["code"] == "invalid_image"
        elif not row["text"]:
            assert rec["error"]["code"] == "missing_input"
    assert summary["errors"] == {"invalid_image": 4, "missing_input": 4}
    assert all(body["encoding_format"] == "base64" for _, body in service.requests)


@pytest.mark.parametrize("command", ["embed", "score"])
def test_a_batch_whose_images_all_fail_reports_each_row(tmp_path, capsys, service, command):
    """The service answers 422 with per-image details; each row gets its own error, in one request."""
    rows = [{"id": "a", "image": BROKEN_IMAGE, "text": "x"}, {"id": "b", "image": BROKEN_IMAGE, "text": "y"}]
    if command == "embed":
        rows = [{"id": r["id"], "image": r["image"]} for r in rows]
    src = write_csv(tmp_path / "in.csv", rows)
    status, summary = run_cli(
        capsys, command, "--input", src, "--output", tmp_path / "o.jsonl", "--endpoint", service.url
    )
    assert status == 0
    assert [(r["id"], r["error"]["code"]) for r in read_jsonl(tmp_path / "o.jsonl")] == [
        ("a", "invalid_image"),
        ("b", "invalid_image"),
    ]
    assert len(service.requests) == 1


def test_a_rejected_row_costs_only_itself(tmp_path, capsys, service):
    rows = [{"id": str(i), "text": REJECTED_TEXT if i == 5 else f"t{i}"} for i in range(8)]
    src = write_csv(tmp_path / "in.csv", rows)
    status, _ = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url,
        "--batch-size",
        "8",
    )
    assert status == 0
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in records] == [str(i) for i in range(8)]
    assert records[5]["error"]["code"] == "invalid_request" and records[5]["text_embedding"] is None
    for i in (0, 1, 2, 3, 4, 6, 7):
        np.testing.assert_array_equal(vector(records[i], "text_embedding"), fake_text_vector(f"t{i}"))


def test_retries_503_with_retry_after_429_and_dropped_connections_lose_nothing(tmp_path, capsys, service):
    service.script.extend([(503, {"Retry-After": "2"}), (429, {"Retry-After": "0"}), "drop", (503, {}), (502, {})])
    rows = [{"id": f"id{i}", "text": f"t{i}"} for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url,
        "--batch-size",
        "5",
        "--concurrency",
        "1",
        "--backoff-max",
        "0.05",
    )
    assert status == 0 and summary["complete"]
    # Retry-After: 2 was honoured although --backoff-max allows only 0.05 s between the other retries.
    gaps = np.diff(service.times)
    assert gaps[0] >= 2.0, f"retried {gaps[0]:.2f} s after the 503 with Retry-After: 2"
    assert max(gaps[1:5]) < 1.0, gaps[1:5]  # the others waited backoff (<= 0.05 s), not Retry-After
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert all(r["error"] is None for r in records)
    assert summary["retries"]["HTTP 503"] == 2 and summary["retries"]["HTTP 429"] == 1
    assert summary["retries"]["HTTP 502"] == 1
    assert sum(summary["retries"].values()) == 5  # the dropped connection too


def test_retries_running_out_stops_the_job_and_a_rerun_finishes_it(tmp_path, capsys, service):
    rows = [{"id": f"id{i}", "text": f"t{i}"} for i in range(12)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "o.jsonl"
    args = (
        "embed",
        "--input",
        src,
        "--output",
        out,
        "--endpoint",
        service.url,
        "--batch-size",
        "3",
        "--concurrency",
        "1",
        "--max-retries",
        "2",
        "--backoff-max",
        "0.05",
    )
    status, _ = run_cli(capsys, *args)  # the first two batches succeed, then the service is down
    assert status == 0
    out.unlink()
    service.requests.clear()

    # Down for good: 3 answers of 503 exhaust 2 retries on the first request.
    service.script.extend([(503, {})] * 3)
    status, summary = run_cli(capsys, *args)
    assert status == 2 and not summary["complete"]
    written = read_jsonl(out) if out.exists() else []
    assert all(r["error"] is None for r in written)  # an outage is never written as a row error

    status, summary = run_cli(capsys, *args)
    assert status == 0 and summary["complete"]
    assert summary["already_done"] == len(written)
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r["id"] for r in rows)


def test_bearer_token_and_headers_are_sent(tmp_path, capsys):
    rows = [{"id": "1", "text": "a"}]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "o.jsonl"
    with FakeService(token="s3cret") as svc:
        status, _ = run_cli(capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url)
        assert status == 2  # 401 is not retried, and not written as a row error
        assert not out.exists() or out.read_text() == ""
        status, _ = run_cli(
            capsys, "embed", "--input", src, "--output", out, "--endpoint", svc.url, "--token", "s3cret"
        )
        assert status == 0 and read_jsonl(out)[0]["error"] is None


def test_local_image_files_are_sent_as_base64(tmp_path, capsys, service):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.jpg").write_bytes(b"\xff\xd8 pretend jpeg bytes")
    rows = [{"id": "cat", "image": "imgs/cat.jpg"}, {"id": "gone", "image": "imgs/missing.jpg"}]
    src = write_csv(tmp_path / "in.csv", rows)  # paths relative to the input file's folder
    status, _ = run_cli(capsys, "embed", "--input", src, "--output", tmp_path / "o.jsonl", "--endpoint", service.url)
    assert status == 0
    cat, gone = read_jsonl(tmp_path / "o.jsonl")
    sent = base64.b64encode(b"\xff\xd8 pretend jpeg bytes").decode()
    np.testing.assert_array_equal(vector(cat, "image_embedding"), fake_image_vector(sent))
    assert gone["error"]["code"] == "file_not_found" and gone["image_embedding"] is None


def test_score_writes_the_rows_back_with_clip_score_and_cosine(tmp_path, capsys, service):
    rows = [{"url": IMG[i], "caption": f"a photo of {i}", "extra": f"x{i}"} for i in range(9)]
    rows[4]["url"] = BROKEN_IMAGE
    rows[6]["caption"] = ""
    src = write_csv(tmp_path / "in.csv", rows)  # no id column: ids are row numbers
    out = tmp_path / "scores.csv"
    status, summary = run_cli(
        capsys, "score", "--input", src, "--output", out, "--endpoint", service.url, "--batch-size", "4"
    )
    assert status == 0 and summary["files"] == [str(out)]
    import csv

    with out.open() as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["url", "caption", "extra", "id", "clip_score", "cosine", "error", "error_message"]
    assert [w["id"] for w in written] == [str(i) for i in range(9)]
    good = []
    for row, w in zip(rows, written):
        assert w["extra"] == row["extra"]
        if row["url"] == BROKEN_IMAGE:
            assert w["error"] == "invalid_image" and w["clip_score"] == ""
        elif not row["caption"]:
            assert w["error"] == "missing_input"
        else:
            cosine = fake_cosine(row["caption"], row["url"])
            assert float(w["cosine"]) == cosine and float(w["clip_score"]) == max(100 * cosine, 0.0)
            good.append(max(100 * cosine, 0.0))
    assert summary["clip_score"]["count"] == len(good) == 7
    assert summary["clip_score"]["mean"] == pytest.approx(float(np.mean(good)))


def test_aws_sigv4_signs_requests(tmp_path, capsys, service, monkeypatch):
    pytest.importorskip("botocore")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}])
    status, _ = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url,
        "--aws-sigv4",
        "--aws-region",
        "eu-west-1",
    )
    assert status == 0
    (headers,) = service.headers
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in headers["Authorization"]
    assert "X-Amz-Date" in headers


def test_aws_sigv4_without_botocore_says_what_to_install(tmp_path, capsys, service, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "botocore", None)
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}])
    status, _ = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url,
        "--aws-sigv4",
        "--aws-region",
        "eu-west-1",
    )
    assert status == 1
    assert "pip install botocore" in caplog.text


def test_google_id_token_is_sent_and_fetched_again_before_it_expires(tmp_path, capsys, service, monkeypatch):
    from clipserve_client import auth

    fetched = []

    def fake_fetch(audience):
        fetched.append(audience)
        return f"id-token-{len(fetched)}"

    monkeypatch.setattr(auth, "fetch_google_id_token", fake_fetch)
    src = write_csv(tmp_path / "in.csv", [{"id": str(i), "text": f"t{i}"} for i in range(4)])
    status, _ = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url + "/",
        "--google-id-token",
        "--batch-size",
        "2",
    )
    assert status == 0
    assert fetched == [service.url]  # audience = the service URL; one fetch for the whole short job
    assert [h["Authorization"] for h in service.headers] == ["Bearer id-token-1"] * 2

    now = [0.0]
    token = auth.GoogleIdToken("https://x.run.app", fetch=lambda a: f"tok@{now[0]}", clock=lambda: now[0])
    assert token.token("https://x.run.app") == "tok@0.0"
    now[0] = 44 * 60.0
    assert token.token("https://x.run.app") == "tok@0.0"
    now[0] = 46 * 60.0
    assert token.token("https://x.run.app") == "tok@2760.0"


def test_an_answer_that_breaks_the_contract_stops_the_job_without_writing_rows(tmp_path, capsys, service):
    service.answer = lambda path, body: (200, {"embeddings": [[0.0] * 8]})  # one vector for two texts
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}])
    out = tmp_path / "o.jsonl"
    status, summary = run_cli(capsys, "embed", "--input", src, "--output", out, "--endpoint", service.url)
    assert status == 2 and summary["written"] == 0
    assert not out.exists() or out.read_text() == ""


def test_api_key_goes_where_the_service_checks_it_and_extra_headers_are_sent(tmp_path, capsys, caplog):
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}])
    with FakeService(token="key-1") as svc:  # the service's API_KEYS: Authorization: Bearer <key>
        status, _ = run_cli(
            capsys,
            "embed",
            "--input",
            src,
            "--output",
            tmp_path / "o.jsonl",
            "--endpoint",
            svc.url,
            "--api-key",
            "key-1",
            "--header",
            "x-request-source: nightly",
        )
        assert status == 0 and svc.headers[0]["x-request-source"] == "nightly"
        status, _ = run_cli(
            capsys,
            "embed",
            "--input",
            src,
            "--output",
            tmp_path / "p.jsonl",
            "--endpoint",
            svc.url,
            "--api-key",
            "key-1",
            "--token",
            "t",
        )
    assert status == 1 and "give one" in caplog.text


def test_a_service_that_stays_overloaded_stops_the_job_with_advice(tmp_path, capsys, service, caplog):
    service.script.extend([(429, {"Retry-After": "0"})] * 3)
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}])
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        tmp_path / "o.jsonl",
        "--endpoint",
        service.url,
        "--max-retries",
        "2",
    )
    assert status == 2 and summary["retries"] == {"HTTP 429": 2}
    assert "lower --concurrency" in caplog.text


def test_a_long_retry_after_is_capped(tmp_path, capsys, service, monkeypatch):
    """Retry-After: 3600 (a confused proxy) waits max(--backoff-max, RETRY_AFTER_MAX_S), not an hour."""
    from clipserve_client import _core

    monkeypatch.setattr(_core, "RETRY_AFTER_MAX_S", 0.5)  # 60 s in a real job
    service.script.append((503, {"Retry-After": "3600"}))
    src = write_csv(tmp_path / "in.csv", [{"id": "1", "text": "a"}])
    args = ("embed", "--input", src, "--output", tmp_path / "o.jsonl", "--endpoint", service.url)
    status, summary = run_cli(capsys, *args, "--backoff-max", "0.05")
    assert status == 0 and summary["complete"] and summary["retries"] == {"HTTP 503": 1}
    assert 0.5 <= service.times[1] - service.times[0] < 3.0

    # A --backoff-max longer than the cap raises it: the job is willing to wait that long anyway.
    assert _core.RetryPolicy(3, backoff_max_s=0.05).delay(0, 3600) == 0.5
    assert _core.RetryPolicy(3, backoff_max_s=120).delay(0, 3600) == 120
    assert _core.RetryPolicy(3, backoff_max_s=120).delay(0, 2) == 2
    assert _core.RetryPolicy(3, backoff_max_s=0.05, retry_after_max_s=7).delay(0, 3600) == 7


@pytest.mark.parametrize("batch_size", [8, 1])
def test_a_row_that_makes_the_service_fail_costs_only_itself(tmp_path, capsys, service, batch_size):
    """HTTP 500 after every retry: the batch is split like a 4xx and the row left alone gets the service's code."""
    rows = [{"id": str(i), "text": POISON_TEXT if i == 5 else f"t{i}"} for i in range(12)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "o.jsonl"
    status, summary = run_cli(
        capsys, "embed", "--input", src, "--output", out, "--endpoint", service.url,
        "--batch-size", str(batch_size), "--concurrency", "1", "--max-retries", "2", "--backoff-max", "0.01",
    )  # fmt: skip
    assert status == 0 and summary["complete"]
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [str(i) for i in range(12)]
    assert records[5]["error"]["code"] == "internal_error" and records[5]["text_embedding"] is None
    for i in set(range(12)) - {5}:
        np.testing.assert_array_equal(vector(records[i], "text_embedding"), fake_text_vector(f"t{i}"))
    assert summary["errors"] == {"internal_error": 1}
    poisoned = [body for _, body in service.requests if POISON_TEXT in body["texts"]]
    # The batch holding the row got its 2 retries; its halves got none for the 500 (they are not retried again).
    assert len(poisoned) == (3 + 3 if batch_size == 8 else 3), [len(b["texts"]) for b in poisoned]
    assert summary["retries"] == {"HTTP 500": 2}


@pytest.mark.parametrize("batch_size", [4, 1])
def test_a_service_that_fails_on_every_row_still_stops_the_job(tmp_path, capsys, service, batch_size):
    service.answer = lambda path, body: (500, {"error": {"code": "internal_error", "message": "broken"}})
    src = write_csv(tmp_path / "in.csv", [{"id": str(i), "text": f"t{i}"} for i in range(8)])
    out = tmp_path / "o.jsonl"
    status, summary = run_cli(
        capsys, "embed", "--input", src, "--output", out, "--endpoint", service.url,
        "--batch-size", str(batch_size), "--concurrency", "1", "--max-retries", "1", "--backoff-max", "0.01",
    )  # fmt: skip
    assert status == 2 and not summary["complete"] and summary["written"] == 0
    assert not out.exists() or out.read_text() == ""  # nothing written as a row error
    # The first batch: its retry, then its halves down to single rows, each once; then the job stopped.
    first_batch = {f"t{i}" for i in range(batch_size)}
    sent = [b for _, b in service.requests if set(b["texts"]) <= first_batch]
    assert len(sent) == (2 + 2 + 4 if batch_size == 4 else 2)


def test_a_service_that_breaks_mid_job_stops_it_without_blaming_the_rows(tmp_path, capsys, service):
    healthy = service.answer
    calls = []

    def breaks_after_two(path, body):
        calls.append(path)
        if len(calls) > 2:
            return 500, {"error": {"code": "internal_error", "message": "broken"}}
        return healthy(path, body)

    service.answer = breaks_after_two
    src = write_csv(tmp_path / "in.csv", [{"id": str(i), "text": f"t{i}"} for i in range(16)])
    out = tmp_path / "o.jsonl"
    status, summary = run_cli(
        capsys, "embed", "--input", src, "--output", out, "--endpoint", service.url,
        "--batch-size", "4", "--concurrency", "1", "--max-retries", "1", "--backoff-max", "0.01",
    )  # fmt: skip
    assert status == 2 and summary["written"] == 8
    assert all(r["error"] is None for r in read_jsonl(out))
