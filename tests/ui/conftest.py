"""One Chromium (Debian's, driven by Playwright) and one gunicorn serving a small index with thumbnails, for the
whole session; every test gets a fresh page that fails the test on a request to another host or a console error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port, gunicorn, need_tool
from ui_helpers import API_KEY, Watched, watch



@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    binary = need_tool("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def demo_index(tiny_model_dir, tmp_path_factory) -> Path:
    """24 generated pictures indexed by the real `clipserve-batch index build --thumbnails`."""
    from batch import demo_images
    from batch.cli import main

    folder = tmp_path_factory.mktemp("demo")
    rows = demo_images.write(folder / "pictures", 24)
    out = folder / "indexes" / "demo" / "v1"
    assert main(["index", "build", "--input", str(rows), "--output", str(out), "--local", "--model-dir",
                 str(tiny_model_dir), "--thumbnails"]) == 0
    return out


@pytest.fixture(scope="session")
def cors_origin_port() -> int:
    """The port of the page on another origin that CORS_ORIGINS allows (as http://127.0.0.1:PORT)."""
    return free_port()


@pytest.fixture(scope="session")
def ui_server(tiny_model_dir, demo_index, cors_origin_port, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui-logs") / "gunicorn.log"
    # Two models (english, the index's, is the default): the page's model picker is there to be tested.
    with gunicorn(tiny_model_dir, log, INDEX_DIR=str(demo_index), MODELS="english,multilingual",
                  CORS_ORIGINS=f"http://127.0.0.1:{cors_origin_port}") as server:
        yield server


@pytest.fixture(scope="session")
def url_server(tiny_model_dir, tmp_path_factory):
    """An index of texts whose metadata names image URLs on another host, built without thumbnails."""
    import csv

    from batch.cli import main

    folder = tmp_path_factory.mktemp("url-index")
    with (folder / "items.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "image_url"])
        writer.writerows([f"u{i}", f"picture number {i}", f"https://images.example/{i}.png"] for i in range(10))
    out = folder / "indexes" / "urls" / "v1"
    assert main(["index", "build", "--input", str(folder / "items.csv"), "--output", str(out), "--local",
                 "--model-dir", str(tiny_model_dir)]) == 0
    with gunicorn(tiny_model_dir, folder / "gunicorn.log", INDEX_DIR=str(out)) as server:
        yield server


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir, demo_index, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui-keyed-logs") / "gunicorn.log"
    with gunicorn(tiny_model_dir, log, INDEX_DIR=str(demo_index), API_KEYS=API_KEY) as server:
        yield server


@pytest.fixture
def context(chromium):
    ctx = chromium.new_context(viewport={"width": 1200, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    yield ctx
    ctx.close()


@pytest.fixture
def ui(context, ui_server) -> Iterator[Watched]:
    """The playground of the keyless server; after the test: nothing requested elsewhere, no console error."""
    watched = watch(context, ui_server.url)
    yield watched
    assert watched.foreign == [], f"the page asked another origin: {watched.foreign}"
    assert watched.errors == [], f"console errors: {watched.errors}"
