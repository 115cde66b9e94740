"""docs/clients.md's Python-client snippets, as written, against the real gunicorn on tiny bundles with a live
(Qdrant local-mode) index, and the in-process interface against the remote one."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from clipserve_client import Client
from docs_snippets import CLIENT_SNIPPETS, run_snippet
from servers import gunicorn


@pytest.fixture(scope="module")
def server(tiny_model_dir, live_index, tmp_path_factory):
    folder, collection = live_index
    with gunicorn(tiny_model_dir, tmp_path_factory.mktemp("log") / "gunicorn.log", QDRANT_PATH=str(folder),
                  QDRANT_COLLECTION=collection) as running:
        yield running


@pytest.fixture()
def photos(tmp_path, monkeypatch):
    """The snippets' working folder: photos/cat.jpg, photos/dog.jpg, photos/car.jpg and a broken one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("cat", "dog", "car"):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.jpg")
    (folder / "zz-broken.jpg").write_bytes(b"not a jpeg")
    monkeypatch.chdir(tmp_path)
    return folder


def test_embed_a_folder_with_a_progress_bar(server, photos, capsys):
    namespace = run_snippet("client-folder", server.url)
    result = namespace["result"]
    assert result.vectors.shape == (4, 32) and result.vectors.dtype == np.float32
    assert [(e.index, e.code) for e in result.errors] == [(3, "invalid_image")]  # zz-broken.jpg sorts last
    with Client(server.url) as clip:
        one = clip.embed_image([photos / "dog.jpg"]).vectors[0]
    np.testing.assert_allclose(result.vectors[2], one, atol=1e-6)  # car, cat, dog, zz-broken


def test_zero_shot(server, photos):
    result = run_snippet("client-zero-shot", server.url)["result"]
    assert result.probs.shape == (2, 3) and np.allclose(result.probs.sum(axis=1), 1)
    assert result.best == [result.labels[int(np.argmax(row))] for row in result.probs]


def test_search_with_a_filter_on_the_live_index(server, photos, capsys):
    namespace = run_snippet("client-search", server.url)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("sku-1 1.0")  # the item written with the query's own text, found first
    assert all(line.split()[0] != "b" for line in printed)  # shop y is filtered out
    with namespace["Client"](server.url) as clip:
        assert "sku-1" not in [hit.id for hit in clip.search("a red bicycle", top_k=5)]  # deleted


def test_async(server, photos, capsys):
    run_snippet("client-async", server.url)
    similarity = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", capsys.readouterr().out)]
    assert len(similarity) == 2 and all(abs(x) <= 1.0001 for x in similarity)  # one image against two texts


def test_the_in_process_interface_gives_the_remote_vectors(server, photos, tiny_model_dir, capsys):
    run_snippet("client-local", server.url, **{"./model_bundles": str(tiny_model_dir)})
    assert capsys.readouterr().out.strip() == "(2, 32)"
    from handler.local import local_async_client, local_client

    texts = ["a cat", "a dog", "a red bicycle"]
    images = [photos / "cat.jpg", photos / "car.jpg"]
    with Client(server.url) as remote, local_client(model_dir=tiny_model_dir, precision="fp32") as local:
        np.testing.assert_array_equal(local.embed_text(texts).vectors, remote.embed_text(texts).vectors)
        np.testing.assert_array_equal(local.embed_image(images).vectors, remote.embed_image(images).vectors)
        assert local.models()[0]["id"] == "english"
        local_scores = local.score(texts, images).cosine
        np.testing.assert_allclose(local_scores, remote.score(texts, images).cosine, atol=1e-6)

    import asyncio

    async def run():
        async with local_async_client(model_dir=tiny_model_dir, precision="fp32") as clip:
            return (await clip.embed_text(texts)).vectors

    with Client(server.url) as remote:
        np.testing.assert_array_equal(asyncio.run(run()), remote.embed_text(texts).vectors)


def test_the_service_class_names(server, photos, capsys):
    namespace = run_snippet("client-compat", server.url)
    out = capsys.readouterr().out
    assert "'variant': 'english'" in out
    with Client(server.url) as clip:
        text = clip.embed_text(["red apple"]).vectors[0]
        image = clip.embed_image([photos / "cat.jpg"]).vectors[0]
    assert f"{float(text @ image):.4f}"[:5] in out
    assert namespace["CompatService"]


def test_every_client_snippet_is_run_here():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert all(f'"{name}"' in source for name in CLIENT_SNIPPETS)
