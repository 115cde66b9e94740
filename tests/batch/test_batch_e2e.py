"""clipserve-batch against the real service (gunicorn + tiny bundle on loopback), and --local.

The service batches across requests and trims texts to the longest one in a batch, so the same
row can differ in the last float bits between two calls; vectors are compared to 1e-5.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from batch_helpers import read_jsonl, run_cli, vector, write_csv

REPO = Path(__file__).resolve().parents[2]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "MODEL_VARIANT": "english",
        "PORT": str(port),
        "ALLOW_PRIVATE_URLS": "true",
        "HTTP_THREADS": "4",
        "TORCH_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "infra/gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        "handler.wsgi:app",
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gunicorn exited:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"service not healthy in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def service_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    proc = start_gunicorn(tiny_model_dir, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop(proc)


def png(seed: int, size: tuple[int, int]) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Rows with texts, local image files, image URLs on a loopback server, a broken and a missing file."""
    root = tmp_path_factory.mktemp("batch_data")
    (root / "img").mkdir()
    for i in range(6):
        (root / "img" / f"{i}.png").write_bytes(png(i, (40 + 9 * i, 64 - 3 * i)))
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(root / "img")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = [
        {"id": "t0", "text": "a photo of a cat", "image": ""},
        {"id": "i0", "text": "", "image": "img/0.png"},
        {"id": "b1", "text": "a red square on a table", "image": "img/1.png"},
        {"id": "u2", "text": "", "image": f"{base}/2.png"},
        {"id": "b3", "text": "zwei Hunde im Schnee", "image": f"{base}/3.png"},
        {"id": "d4", "text": "", "image": base64.b64encode(png(4, (50, 50))).decode()},
        {"id": "bad", "text": "still embedded", "image": "img/broken.png"},
        {"id": "gone", "text": "", "image": "img/missing.png"},
        {"id": "i5", "text": "the last one " * 3, "image": "img/5.png"},
    ]
    yield {"root": root, "rows": rows, "csv": write_csv(root / "rows.csv", rows)}
    server.shutdown()
    server.server_close()


def service_answers(url: str, rows: list[dict], root: Path) -> dict[str, dict]:
    """What the service itself says for each row, asked directly, one row per request."""
    answers = {}
    for row in rows:
        answer: dict = {}
        if row["text"]:
            body = requests.post(url + "/embed/text", json={"texts": [row["text"]]}, timeout=30).json()
            answer["text"] = np.asarray(body["embeddings"][0], np.float32)
        image = row["image"]
        if image:
            if image.startswith("img/"):
                path = root / image
                image = base64.b64encode(path.read_bytes()).decode() if path.exists() else None
            if image is not None:
                r = requests.post(url + "/embed/image", json={"images": [image]}, timeout=30)
                body = r.json()
                if r.status_code == 200:
                    answer["image"] = np.asarray(body["embeddings"][0], np.float32)
                else:
                    answer["image_error"] = body["error"]["details"][0]["code"]
        answers[row["id"]] = answer
    return answers


def check_embeddings(out: Path, dataset: dict, answers: dict[str, dict]) -> None:
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["id"] for r in dataset["rows"]]
    for rec in records:
        expected = answers[rec["id"]]
        if "text" in expected:
            np.testing.assert_allclose(vector(rec, "text_embedding"), expected["text"], **TOL)
        else:
            assert rec["text_embedding"] is None
        if "image" in expected:
            np.testing.assert_allclose(vector(rec, "image_embedding"), expected["image"], **TOL)
            assert rec["error"] is None
        else:
            assert rec["image_embedding"] is None
    by_id = {r["id"]: r for r in records}
    assert by_id["bad"]["error"]["code"] == "invalid_image" == answers["bad"]["image_error"]
    assert by_id["gone"]["error"]["code"] == "file_not_found"


def test_embed_equals_the_services_own_answers(service_url, dataset, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        dataset["csv"],
        "--output",
        out,
        "--endpoint",
        service_url,
        "--batch-size",
        "4",
        "--concurrency",
        "2",
    )
    assert status == 0 and summary["complete"], summary
    assert summary["model"]["variant"] == "english" and summary["model"]["dim"] == 32
    assert summary["errors"] == {"file_not_found": 1, "invalid_image": 1}
    check_embeddings(out, dataset, service_answers(service_url, dataset["rows"], dataset["root"]))


def test_local_gives_the_same_vectors_as_the_endpoint(service_url, dataset, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "local.jsonl"
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        dataset["csv"],
        "--output",
        out,
        "--local",
        "--model-dir",
        tiny_model_dir,
        "--variant",
        "english",
        "--allow-private-urls",
        "--batch-size",
        "3",
    )
    assert status == 0 and summary["complete"]
    assert summary["errors"] == {"file_not_found": 1, "invalid_image": 1}
    check_embeddings(out, dataset, service_answers(service_url, dataset["rows"], dataset["root"]))


def test_score_equals_the_services_own_answers_and_local(service_url, dataset, tiny_model_dir, tmp_path, capsys):
    rows = [r for r in dataset["rows"] if r["text"] and r["image"]]
    absolute = [str(dataset["root"] / r["image"]) if r["image"].startswith("img/") else r["image"] for r in rows]
    src = write_csv(
        tmp_path / "pairs.csv", [{"id": r["id"], "caption": r["text"], "url": url} for r, url in zip(rows, absolute)]
    )
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    assert (
        run_cli(capsys, "score", "--input", src, "--output", remote, "--endpoint", service_url, "--batch-size", "2")[0]
        == 0
    )
    assert (
        run_cli(
            capsys,
            "score",
            "--input",
            src,
            "--output",
            local,
            "--local",
            "--model-dir",
            tiny_model_dir,
            "--allow-private-urls",
        )[0]
        == 0
    )
    for row, r_rec, l_rec in zip(rows, read_jsonl(remote), read_jsonl(local), strict=True):
        assert r_rec["id"] == l_rec["id"] == row["id"] and r_rec["caption"] == row["text"]
        if row["id"] == "bad":
            assert r_rec["error"]["code"] == l_rec["error"]["code"] == "invalid_image"
            continue
        image = row["image"]
        if image.startswith("img/"):
            image = base64.b64encode((dataset["root"] / image).read_bytes()).decode()
        assert r_rec["error"] is None and l_rec["error"] is None
        body = requests.post(
            service_url + "/score", json={"texts": [row["text"]], "images": [image], "pairwise": True}, timeout=30
        ).json()
        assert r_rec["cosine"] == pytest.approx(body["cosine"][0], abs=1e-5)
        assert r_rec["clip_score"] == pytest.approx(body["clip_score"][0], abs=1e-3)
        assert l_rec["cosine"] == pytest.approx(body["cosine"][0], abs=1e-5)
        assert l_rec["clip_score"] == pytest.approx(body["clip_score"][0], abs=1e-3)


@pytest.mark.parametrize("command", ["embed", "score"])
def test_a_text_longer_than_the_context_is_cut_the_same_locally_and_remotely(
    service_url, dataset, tiny_model_dir, tmp_path, capsys, command
):
    """A 10,000-character description is embedded (cut to the context), by the service and by --local alike."""
    image = base64.b64encode(png(4, (50, 50))).decode()
    description = " ".join(f"word{i % 97} red car" for i in range(1000))[:10_000]
    rows = [
        {"id": "long", "text": description, "image": image},
        {"id": "after", "text": "a dog", "image": image},
    ]
    src = write_csv(tmp_path / "in.csv", rows)
    outputs = []
    for where in (["--endpoint", service_url], ["--local", "--model-dir", tiny_model_dir]):
        out = tmp_path / f"{where[0].strip('-')}.jsonl"
        status, summary = run_cli(capsys, command, "--input", src, "--output", out, *where, "--batch-size", "2")
        assert status == 0 and summary["complete"] and summary["errors"] == {}, summary
        outputs.append({r["id"]: r for r in read_jsonl(out)})
    remote, local = outputs
    if command == "embed":
        for records in (remote, local):
            assert records["long"]["truncated"] is True and "truncated" not in records["after"]
        for row_id in ("long", "after"):
            for key in ("text_embedding", "image_embedding"):
                np.testing.assert_allclose(vector(local[row_id], key), vector(remote[row_id], key), **TOL)
    else:
        for row_id in ("long", "after"):
            assert local[row_id]["cosine"] == pytest.approx(remote[row_id]["cosine"], abs=1e-5)


def test_local_reads_max_text_chars_like_the_service(english_encoder, monkeypatch):
    from batch.local_target import LocalTarget
    from batch.reader import Row

    monkeypatch.setenv("MAX_TEXT_CHARS", "10")
    target = LocalTarget(english_encoder)
    ten, eleven = target.embed([Row(0, "a", "x" * 10, None), Row(1, "b", "x" * 11, None)])
    assert ten.error is None and ten.text_embedding is not None
    assert eleven.error is not None and eleven.error.code == "invalid_request" and eleven.text_embedding is None
    monkeypatch.setenv("MAX_TEXT_CHARS", "lots")
    with pytest.raises(ValueError, match="MAX_TEXT_CHARS"):
        LocalTarget(english_encoder)


def test_a_cold_start_is_waited_out(tiny_model_dir, dataset, tmp_path, capsys):
    """The job starts before the service does: refused connections, then 503 while it loads."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_gunicorn(tiny_model_dir, port, tmp_path / "gunicorn.log")
    try:
        status, summary = run_cli(
            capsys,
            "embed",
            "--input",
            dataset["csv"],
            "--output",
            tmp_path / "o.jsonl",
            "--endpoint",
            url,
            "--max-retries",
            "100",
            "--backoff-max",
            "0.5",
        )
    finally:
        stop(proc)
    assert status == 0 and summary["complete"], summary
    assert sum(summary["retries"].values()) >= 1
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in dataset["rows"]]
    assert {r["id"] for r in records if r["error"]} == {"bad", "gone"}


def test_local_multilingual_equals_the_encoder(tiny_model_dir, multilingual_encoder, tmp_path, capsys):
    """--variant picks the bundle; rows come out as the encoder itself embeds them (texts in any
    language, images decoded as the service decodes them), unnormalized with --no-normalize."""
    from PIL import Image

    (tmp_path / "a.png").write_bytes(png(7, (61, 45)))
    rows = [
        {"id": "de", "text": "zwei Hunde im Schnee", "image": "a.png"},
        {"id": "ja", "text": "雪の中の二匹の犬", "image": ""},
    ]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "m.jsonl"
    status, summary = run_cli(
        capsys,
        "embed",
        "--input",
        src,
        "--output",
        out,
        "--local",
        "--model-dir",
        tiny_model_dir,
        "--variant",
        "multilingual",
        "--no-normalize",
    )
    assert status == 0 and summary["model"]["variant"] == "multilingual"
    de, ja = read_jsonl(out)
    texts = multilingual_encoder.encode_text([r["text"] for r in rows], normalize=False).embeddings
    np.testing.assert_allclose(vector(de, "text_embedding"), texts[0], **TOL)
    np.testing.assert_allclose(vector(ja, "text_embedding"), texts[1], **TOL)
    image = Image.open(tmp_path / "a.png").convert("RGB")
    expected = multilingual_encoder.encode_images([multilingual_encoder.prepare_image(image)], normalize=False)[0]
    np.testing.assert_allclose(vector(de, "image_embedding"), expected, **TOL)
    assert abs(np.linalg.norm(expected) - 1.0) > 1e-3  # really unnormalized, so the option was applied
    assert ja["image_embedding"] is None and ja["error"] is None


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("where", ["endpoint", "local"])
def test_score_compare_scores_one_per_request_and_batched_alike(where, service_url, tiny_model_dir, tmp_path, capsys):
    import csv

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(24):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg(i))
        rows.append({"id": f"p{i}", "caption": f"a picture number {i}", "url": f"img/{i}.jpg", "owner": f"o{i % 3}"})
    rows.append({"id": "broken", "caption": "nothing", "url": "img/missing.jpg", "owner": "o0"})
    src = write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "scores.csv"
    target = ["--endpoint", service_url] if where == "endpoint" else ["--local", "--model-dir", tiny_model_dir]
    status, summary = run_cli(capsys, "score", "--input", src, "--output", out, *target, "--batch-size", "8",
                              "--compare")
    assert status == 0, summary
    assert summary["same"] and summary["rows"] == 25 and summary["max_clip_score_difference"] <= 0.1
    assert [m["mode"] for m in summary["modes"]] == ["one per request", "batched"]
    assert all(m["images_per_s"] > 0 and m["errors"] == 1 for m in summary["modes"])
    with (tmp_path / "scores_comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["mode"], r["batch_size"]) for r in table] == [("one per request", "1"), ("batched", "8")]
    assert float(table[1]["speedup"]) == pytest.approx(float(table[1]["images_per_s"]) / float(table[0]["images_per_s"]),
                                                        rel=0.01)
    with out.open() as f:
        scored = list(csv.DictReader(f))
    assert [r["id"] for r in scored] == [r["id"] for r in rows]  # the user's rows come back, in order
    assert scored[0]["owner"] == "o0" and float(scored[0]["clip_score"]) >= 0 and scored[-1]["error"] == "file_not_found"
    again = run_cli(capsys, "score", "--input", src, "--output", out, *target, "--compare")
    assert again[0] == 1  # the timings need a fresh output
