"""`clipserve-batch index build`: from rows (embedding them with --local), from an embed output (JSONL or the
.npy set) with --metadata; the same input gives the same files; failed rows are left out and counted; a killed
build leaves nothing that looks complete and a re-run ends with the same index."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from batch.cli import main
from models.bundle import model_identity, sha256_file
from search.faiss_index import FaissIndex
from search.query import Query

ROOT = Path(__file__).resolve().parents[2]
DATA_FILES = ("vectors.faiss", "items.sqlite")


def png(seed: int) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run(capsys, *args) -> tuple[int, dict | None]:
    capsys.readouterr()
    status = main([str(a) for a in args])
    out = capsys.readouterr().out.strip().splitlines()
    return status, (json.loads(out[-1]) if out else None)


@pytest.fixture(scope="module")
def items_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("items") / "items.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "image", "category", "price", "code", "note"])
        for i in range(40):
            image = "data:image/png;base64,iVBORw0KGgoAAAA=" if i == 7 else png(i)  # corrupt
            writer.writerow([f"p{i}", f"product {i}", image, i % 4, f"{i * 1.5:.1f}" if i != 3 else "",
                             "12" if i % 2 else "x12", "" if i % 5 else "sale"])
    return path


@pytest.fixture(scope="module")
def built(items_csv, tiny_model_dir, tmp_path_factory, capsys_module=None):
    """v1 built from the rows with --local (as a user runs it)."""
    out = tmp_path_factory.mktemp("indexes") / "shop" / "v1"
    status = main(["index", "build", "--input", str(items_csv), "--output", str(out), "--local",
                   "--model-dir", str(tiny_model_dir), "--metadata-columns", "text,category,price,code,note"])
    assert status == 0
    return out


def test_a_build_from_rows_records_model_modality_types_and_left_out_rows(built, tiny_model_dir):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format"] == "clipserve-index" and manifest["format_version"] == 1
    assert (manifest["name"], manifest["version"]) == ("shop", "v1")
    assert manifest["model"] == model_identity(tiny_model_dir, "english")
    assert manifest["modality"] == "image" and manifest["count"] == 39  # p7's image failed: left out
    assert manifest["build"]["skipped"] == {"invalid_image": 1}
    assert manifest["index"] == {"type": "flat", "metric": "inner_product"}
    assert manifest["metadata"]["columns"] == {"text": "str", "category": "int", "price": "float", "code": "str",
                                               "note": "str"}
    for name in DATA_FILES:
        assert manifest["files"][name] == {"sha256": sha256_file(built / name), "size": (built / name).stat().st_size}
    index = FaissIndex.open(built)
    try:
        with pytest.raises(Exception, match="no item"):
            index.vector_of("p7")
        [hit] = index.search(Query(index.vector_of("p3"), top_k=1))
        assert hit.id == "p3" and hit.metadata == {"text": "product 3", "category": 3, "price": None, "code": "12",
                                                   "note": None}
    finally:
        index.close()


def test_the_vectors_are_the_embed_outputs(built, capsys):
    """The index holds exactly what `embed` wrote for each row (normalized), in input order."""
    records = [json.loads(line) for line in built.with_name("v1.embeddings.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    index = FaissIndex.open(built)
    try:
        for item_id in ("p0", "p8", "p39"):
            expected = np.asarray(by_id[item_id]["image_embedding"], np.float32)
            np.testing.assert_allclose(index.vector_of(item_id), expected / np.linalg.norm(expected), atol=1e-6)
    finally:
        index.close()


def test_the_same_input_gives_the_same_files_from_rows_jsonl_and_npy(built, items_csv, tiny_model_dir, capsys):
    parent = built.parent
    common = ["--local", "--model-dir", tiny_model_dir, "--metadata-columns", "text,category,price,code,note"]
    status, again = run(capsys, "index", "build", "--input", items_csv, "--output", parent / "v2", *common)
    assert status == 0 and again["count"] == 39
    embeddings = built.with_name("v1.embeddings.jsonl")
    status, _ = run(capsys, "index", "build", "--input", embeddings, "--metadata", items_csv,
                    "--output", parent / "v3", *common)
    assert status == 0
    status, _ = run(capsys, "merge", "--input", items_csv, "--output", parent / "emb.npy", "--parts", embeddings)
    assert status == 0
    status, _ = run(capsys, "index", "build", "--input", parent / "emb.npy", "--metadata", items_csv,
                    "--output", parent / "v4", *common)
    assert status == 0
    for version in ("v2", "v3", "v4"):
        for name in DATA_FILES:
            assert sha256_file(parent / version / name) == sha256_file(built / name), (version, name)


def test_jsonl_rows_keep_their_json_types(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": f"r{i}", "text": f"item {i}", "n": i, "score": i / 2, "ok": i % 2 == 0, "tags": ["a"] * i,
             "mixed": i if i % 2 else "x"} for i in range(6)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    status, summary = run(capsys, "index", "build", "--input", src, "--output", tmp_path / "idx" / "v1", "--local",
                          "--model-dir", tiny_model_dir)
    assert status == 0 and summary["modality"] == "text"
    assert summary["columns"] == {"text": "str", "n": "int", "score": "float", "ok": "bool", "tags": "json",
                                  "mixed": "json"}
    index = FaissIndex.open(tmp_path / "idx" / "v1")
    try:
        [hit] = index.search(Query(index.vector_of("r3"), top_k=1))
        assert hit.metadata == {k: v for k, v in rows[3].items() if k != "id"}
    finally:
        index.close()


def test_duplicate_ids_stop_the_build_naming_them(tiny_model_dir, tmp_path, capsys, caplog):
    src = tmp_path / "dup.csv"
    src.write_text("id,text\na,one\nb,two\na,three\n")
    status, _ = run(capsys, "index", "build", "--input", src, "--output", tmp_path / "idx" / "v1", "--local",
                    "--model-dir", tiny_model_dir)
    assert status == 1 and "duplicate id 'a'" in caplog.text
    assert not (tmp_path / "idx" / "v1").exists()


def test_an_existing_version_is_never_overwritten(built, items_csv, tiny_model_dir, capsys, caplog):
    before = sha256_file(built / "vectors.faiss")
    status, _ = run(capsys, "index", "build", "--input", items_csv, "--output", built, "--local",
                    "--model-dir", tiny_model_dir)
    assert status == 1 and "immutable" in caplog.text and sha256_file(built / "vectors.faiss") == before


def test_a_killed_build_leaves_nothing_complete_and_a_rerun_gives_the_same_index(built, items_csv, tiny_model_dir,
                                                                                 tmp_path):
    """SIGKILL while embedding (a part file half written), and a version folder a kill while writing left (data
    files, no manifest): the re-run resumes, clears it and publishes the same files as an uninterrupted build
    with the same --batch-size
    (batches of another size may differ in a vector's last bits, as any batched float computation)."""
    out = tmp_path / "shop" / "v1"
    part = out.with_name("v1.embeddings.jsonl")
    command = [sys.executable, "-m", "batch", "index", "build", "--input", str(items_csv), "--output", str(out),
               "--local", "--model-dir", str(tiny_model_dir), "--batch-size", "1", "--concurrency", "1",
               "--metadata-columns", "text,category,price,code,note"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not part.exists() or part.read_bytes().count(b"\n") < 5):
        assert proc.poll() is None, "the build finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not out.exists() and 5 <= part.read_bytes().count(b"\n") < 40
    out.mkdir()
    (out / "vectors.faiss").write_bytes(b"half")
    from search.errors import IndexUnusable
    from search.index_format import read_manifest

    with pytest.raises(IndexUnusable, match="no manifest.json"):  # the service would refuse it
        read_manifest(out)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["count"] == 39
    reference = tmp_path / "uninterrupted" / "v1"
    at = command.index("--output") + 1
    whole = subprocess.run([*command[:at], str(reference), *command[at + 1:]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    for name in DATA_FILES:
        assert sha256_file(out / name) == sha256_file(reference / name), name
