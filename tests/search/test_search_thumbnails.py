"""`index build --thumbnails` and GET /items/<id>/thumbnail: built deterministically inside the version folder
(listed in the manifest), served as JPEG with caching headers, 404 with a clear code where there is none, and the
service never writes to the folder. Also: a folder of images as the build's input."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch import thumbnails as batch_thumbnails
from batch.cli import main
from handler.app import create_app
from infra.settings import Settings
from models.bundle import sha256_file
from search import thumbnails

ROWS = 9  # 5 files, base64, no image, an image URL, a missing file


def photo(path: Path, seed: int, size: tuple[int, int] = (300, 200)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory) -> Path:
    """Local files (relative paths, one in a sub-folder), base64, no image, an image URL and a missing file (the last
    two fail to embed offline and are left out of the index)."""
    root = tmp_path_factory.mktemp("thumbs")
    (root / "pics" / "sub").mkdir(parents=True)
    cells = []
    for i in range(5):
        name = f"pics/{'sub/' if i == 1 else ''}p{i}.jpg"
        photo(root / name, i)
        cells.append(name)
    buf = io.BytesIO()
    Image.fromarray(np.full((50, 80, 3), 200, np.uint8)).save(buf, format="PNG")
    cells += [base64.b64encode(buf.getvalue()).decode(), "", "https://images.example/cat.jpg", "pics/missing.jpg"]
    path = root / "items.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "image"])
        for i, cell in enumerate(cells):
            writer.writerow([f"item/{i}", f"thing {i}", cell])
    return path


def build(rows: Path, out: Path, model_dir: Path, *extra: str) -> int:
    return main(["index", "build", "--input", str(rows), "--output", str(out), "--local", "--model-dir",
                 str(model_dir), "--modality", "text", *extra])


@pytest.fixture(scope="module")
def built(rows_csv, tiny_model_dir) -> Path:
    out = rows_csv.parent / "idx" / "v1"
    assert build(rows_csv, out, tiny_model_dir, "--thumbnails") == 0
    return out


def test_two_builds_are_byte_identical_and_the_manifest_counts_the_thumbnails(built, rows_csv, tiny_model_dir):
    again = built.with_name("v2")
    assert build(rows_csv, again, tiny_model_dir, "--thumbnails") == 0
    for name in (thumbnails.BIN, thumbnails.OFFSETS):
        assert sha256_file(built / name) == sha256_file(again / name)
    manifest = json.loads((built / "manifest.json").read_text())
    assert {thumbnails.BIN, thumbnails.OFFSETS} <= set(manifest["files"])
    section = manifest["thumbnails"]
    assert section["format"] == "jpeg" and section["size"] == 128
    assert manifest["count"] == 7
    assert section["count"] == 6  # the row without an image is indexed (by its text) with no thumbnail
    assert section["bytes"] == (built / thumbnails.BIN).stat().st_size


def test_a_size_is_taken_and_checked(rows_csv, tiny_model_dir, capsys):
    out = rows_csv.parent / "idx" / "small"
    assert build(rows_csv, out, tiny_model_dir, "--thumbnails=48") == 0
    reader = thumbnails.Thumbnails(out, 7)
    try:
        assert max(Image.open(io.BytesIO(reader.get(0))).size) == 48
    finally:
        reader.close()
    with pytest.raises(SystemExit):
        build(rows_csv, rows_csv.parent / "idx" / "bad", tiny_model_dir, "--thumbnails=8")
    assert "16 to 1024" in capsys.readouterr().err


def test_an_image_url_gets_no_thumbnail_and_is_counted():
    skipped: Counter = Counter()
    made = list(batch_thumbnails.thumbnails_of(["https://images.example/a.jpg", None, "data:image/png;base64,AAAA"],
                                               64, [], skipped))
    assert made == [None, None, None]
    assert skipped == {"url_shown_as_is": 1, "no_image": 1, "invalid_image": 1}


def test_thumbnails_need_the_rows_that_name_the_images(built, tiny_model_dir, tmp_path):
    embeddings = built.with_name("v1.embeddings.jsonl")
    assert build(embeddings, tmp_path / "v1", tiny_model_dir, "--thumbnails") == 1  # a usage error
    assert not (tmp_path / "v1" / "manifest.json").exists()


def opened(index_dir: Path, model_dir: Path):
    """The app over ``index_dir``, its model loaded and the index open (a load still running in the background
    would race the next test's own model load)."""
    app = create_app(Settings(model_dir=model_dir, index_dir=index_dir, precision="fp32", runtime="torch"))
    service = app.extensions["clipserve"]
    service.start()
    assert service.search.wait(60) and service.engine.wait_ready(120)
    return app


@pytest.fixture(scope="module")
def client(built, tiny_model_dir):
    """The app over the index, its folder made read-only (as a bucket mount or a baked image is)."""
    os.chmod(built, 0o555)
    yield opened(built, tiny_model_dir).test_client()
    os.chmod(built, 0o755)


def test_a_thumbnail_is_a_small_jpeg_with_caching_headers(client, built):
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in built.iterdir()}
    response = client.get("/items/item/1/thumbnail")  # an id with a slash
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "JPEG" and max(image.size) == 128 and image.size == (128, 85)
    assert response.headers["Cache-Control"] == "public, max-age=60"
    etag = response.headers["ETag"]
    assert client.get("/items/item/1/thumbnail", headers={"If-None-Match": etag}).status_code == 304
    version = json.loads((built / "manifest.json").read_text())["version"]
    pinned = client.get(f"/items/item/1/thumbnail?v={version}")
    assert pinned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert pinned.headers["ETag"] == etag
    assert client.get("/items/item/1/thumbnail", headers={"Authorization": "Bearer x"}).headers[
        "Cache-Control"].startswith("private")
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in built.iterdir()} == before


@pytest.mark.parametrize("item, code", [("nope", "item_not_found"), ("item/7", "item_not_found"),
                                        ("item/6", "thumbnail_not_found")])
def test_no_thumbnail_is_a_404_that_says_why(client, item, code):
    response = client.get(f"/items/{item}/thumbnail")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == code


def test_an_index_without_thumbnails_answers_404_naming_the_build_option(rows_csv, tiny_model_dir):
    out = rows_csv.parent / "idx" / "plain"
    assert build(rows_csv, out, tiny_model_dir) == 0
    assert not (out / thumbnails.BIN).exists()
    app = opened(out, tiny_model_dir)
    response = app.test_client().get("/items/item/0/thumbnail")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "thumbnail_not_found" and "--thumbnails" in error["message"]
    assert app.test_client().get("/").get_json()["search"]["thumbnails"] is False


def test_a_folder_of_images_is_an_input(rows_csv, tiny_model_dir, capsys):
    out = rows_csv.parent / "idx" / "folder"
    capsys.readouterr()
    assert main(["index", "build", "--input", str(rows_csv.parent / "pics"), "--output", str(out), "--local",
                 "--model-dir", str(tiny_model_dir), "--thumbnails"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 5 and summary["modality"] == "image"
    assert summary["thumbnails"]["count"] == 5
    app = opened(out, tiny_model_dir)
    assert app.test_client().get("/items/sub/p1.jpg/thumbnail").status_code == 200
