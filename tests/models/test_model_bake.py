"""`models.bake` without the hub: a local mirror holding tiny files in the upstream formats
(.safetensors from the hub, a .pt release checkpoint, M-CLIP's pytorch_model.bin)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models import bake, pins, registry
from models.bundle import sha256_file
from models.loader import load_encoder
from models.registry import MClipText, OpenClipModel, Source, Variant
from models.tiny import random_clip

TEXTS = ["a photo of a cat", "un chat", " ".join(["tree"] * 700)]


class CountingSource(bake.LocalDirSource):
    def __init__(self, root, fail_on: str | None = None):
        super().__init__(root)
        self.fetched: list[str] = []
        self.fail_on = fail_on

    def fetch(self, source, dest_dir):
        if source.filename == self.fail_on:
            raise ConnectionError(f"download of {source.filename} interrupted")
        self.fetched.append(source.filename)
        return super().fetch(source, dest_dir)


COMMIT = "c0ffee" * 6 + "c0ff"  # the one revision FakeHub knows
NEW_COMMIT = "beef" * 10


def pinned(root: Path, filename: str, repo: str | None = None, **kw) -> Source:
    path = root / repo / filename if repo else root / filename
    return Source(filename, repo=repo, url=None if repo else f"https://example.invalid/{filename}",
                  revision=COMMIT if repo else None, sha256=sha256_file(path), **kw)


@pytest.fixture(scope="module")
def mirror(tiny_model_dir, tmp_path_factory) -> dict:
    """Upstream-shaped files made from the session's tiny bundles, and test variants pinning them."""
    root = tmp_path_factory.mktemp("mirror")
    configs = tmp_path_factory.mktemp("oc_configs")
    manifests = {v: json.loads((tiny_model_dir / v / "manifest.json").read_text()) for v in ("english", "multilingual")}
    for v, name in (("english", "bake-test-english"), ("multilingual", "bake-test-b16plus")):
        (configs / f"{name}.json").write_text(json.dumps(manifests[v]["clip"]["config"]))
    open_clip.add_model_config(configs)

    # english: the hub's open_clip_model.safetensors
    (root / "org/english").mkdir(parents=True)
    shutil.copyfile(tiny_model_dir / "english/open_clip_model.safetensors", root / "org/english/open_clip_model.safetensors")
    english = Variant("english", "test", clip=OpenClipModel(
        "bake-test-english", "test", pinned(root, "open_clip_model.safetensors", "org/english")))

    # multilingual image tower: a full CLIP .pt release checkpoint whose visual part is the tiny bundle's
    full = random_clip(manifests["multilingual"]["clip"]["config"]).state_dict()
    full.update(load_file(tiny_model_dir / "multilingual/open_clip_visual.safetensors"))
    tmp_pt = root / "release.pt"
    torch.save({"epoch": 32, "name": "test", "state_dict": {f"module.{k}": v for k, v in full.items()}}, tmp_pt)
    release_name = f"vit_test-laion400m_e32-{sha256_file(tmp_pt)[:8]}.pt"
    tmp_pt.rename(root / release_name)
    image = registry.openclip_from_url("bake-test-b16plus", "test", url=f"https://example.invalid/{release_name}",
                                       sha256=sha256_file(root / release_name))
    assert image.weights.sha256_prefix == image.weights.sha256[:8]

    # M-CLIP: pytorch_model.bin (with the position_ids key old transformers saved), configs, tokenizer
    text_section = manifests["multilingual"]["text"]
    (root / "org/mclip").mkdir(parents=True)
    (root / "org/xlmr").mkdir(parents=True)
    state = load_file(tiny_model_dir / "multilingual/mclip_text.safetensors")
    state["transformer.embeddings.position_ids"] = torch.arange(514).expand(1, -1)
    torch.save(state, root / "org/mclip/pytorch_model.bin")
    (root / "org/mclip/config.json").write_text(json.dumps(text_section["config"]))
    (root / "org/xlmr/config.json").write_text(json.dumps(text_section["base_config"]))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_model_dir / "multilingual" / f, root / "org/mclip" / f)
    multilingual = Variant("multilingual", "test", clip=image, text=MClipText(
        repo="org/mclip",
        weights=pinned(root, "pytorch_model.bin", "org/mclip"),
        config=pinned(root, "config.json", "org/mclip"),
        tokenizer_files=(pinned(root, "tokenizer.json", "org/mclip"), pinned(root, "tokenizer_config.json", "org/mclip")),
        base_config=pinned(root, "config.json", "org/xlmr")))
    return {"root": root, "english": english, "multilingual": multilingual}


def assert_same_vectors(a, b, size: int):
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    ta, tb = a.encode_text(TEXTS), b.encode_text(TEXTS)
    np.testing.assert_allclose(ta.embeddings, tb.embeddings, atol=1e-6, rtol=0)
    assert ta.truncated == tb.truncated == [2]
    xa, xb = a.prepare_image(image), b.prepare_image(image)
    assert xa.shape == (3, size, size)
    np.testing.assert_allclose(a.encode_images([xa]), b.encode_images([xb]), atol=1e-6, rtol=0)


def test_bake_english_gives_the_source_weights(mirror, english_encoder, tmp_path):
    path = bake.bake_variant(mirror["english"], tmp_path, bake.LocalDirSource(mirror["root"]), onnx=False)
    assert path == tmp_path / "english"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["origin"] == "models.bake"
    [record] = manifest["sources"]
    assert record["revision"] == COMMIT and record["sha256_seen"] == mirror["english"].clip.weights.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["english"]  # no staging or download leftovers
    assert_same_vectors(load_encoder("english", tmp_path), english_encoder, 224)


def test_bake_multilingual_converts_pt_and_bin(mirror, multilingual_encoder, tmp_path):
    path = bake.bake_variant(mirror["multilingual"], tmp_path, bake.LocalDirSource(mirror["root"]))
    files = sorted(p.name for p in path.iterdir())
    onnx = json.loads((path / "manifest.json").read_text())["onnx"]  # checked against torch before publishing
    # int8 graphs are kept only where they reach the fidelity bar, which depends on the CPU's int8 kernels (an
    # AVX2-only CPU loses more than an AVX-512 VNNI one): present exactly when the manifest says so.
    int8 = ["image.int8.onnx", "image.int8.onnx.data", "text.int8.onnx", "text.int8.onnx.data"]
    assert files == sorted(["image.onnx", "image.onnx.data", "manifest.json", "mclip_text.bf16.safetensors",
                            "mclip_text.safetensors", "open_clip_visual.bf16.safetensors", "open_clip_visual.safetensors",
                            "text.onnx", "text.onnx.data", "tokenizer.json", "tokenizer_config.json"]
                           + (int8 if onnx["int8"]["written"] else []))
    assert onnx["image"]["max_abs_diff"] <= 1e-5 and onnx["text"]["max_abs_diff"] <= 1e-5
    for name in ("mclip_text", "open_clip_visual"):  # the bf16 copies are the fp32 weights, converted
        fp32, bf16 = load_file(path / f"{name}.safetensors"), load_file(path / f"{name}.bf16.safetensors")
        assert fp32.keys() == bf16.keys() and all(torch.equal(fp32[k].to(bf16[k].dtype), bf16[k]) for k in fp32)
    visual = load_file(path / "open_clip_visual.safetensors")
    assert all(k.startswith("visual.") or k == "logit_scale" for k in visual)  # text tower not shipped
    assert_same_vectors(load_encoder("multilingual", tmp_path), multilingual_encoder, 240)


def test_corrupted_download_is_rejected_and_leaves_no_bundle(mirror, tmp_path):
    bad_root = tmp_path / "bad_mirror"
    shutil.copytree(mirror["root"] / "org/english", bad_root / "org/english")
    weights = bad_root / "org/english/open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    out = tmp_path / "models"
    with pytest.raises(bake.ChecksumMismatch, match="open_clip_model.safetensors"):
        bake.bake_variant(mirror["english"], out, bake.LocalDirSource(bad_root), onnx=False)
    assert list(out.iterdir()) == []


def test_release_file_must_match_its_sha256_prefix(mirror, tmp_path):
    variant = mirror["multilingual"]
    wrong = replace(variant, clip=replace(variant.clip, weights=replace(variant.clip.weights, sha256_prefix="00000000")))
    with pytest.raises(bake.ChecksumMismatch, match="does not start with 00000000"):
        bake.bake_variant(wrong, tmp_path, bake.LocalDirSource(mirror["root"]), onnx=False)
    assert list(tmp_path.iterdir()) == []


def test_second_bake_is_a_noop_and_a_new_pin_rebakes(mirror, tmp_path):
    source = CountingSource(mirror["root"])
    bake.bake_variant(mirror["english"], tmp_path, source, onnx=False)
    manifest = tmp_path / "english/manifest.json"
    before = manifest.stat().st_mtime_ns
    assert bake.bake_variant(mirror["english"], tmp_path, source, onnx=False) is None
    assert source.fetched == ["open_clip_model.safetensors"]
    assert manifest.stat().st_mtime_ns == before

    moved = replace(mirror["english"], clip=replace(mirror["english"].clip, weights=replace(
        mirror["english"].clip.weights, revision=NEW_COMMIT)))
    assert bake.bake_variant(moved, tmp_path, source, onnx=False) == tmp_path / "english"
    assert json.loads(manifest.read_text())["sources"][0]["revision"] == NEW_COMMIT


def test_interrupted_rebake_keeps_the_previous_bundle(mirror, multilingual_encoder, tmp_path):
    bake.bake_variant(mirror["multilingual"], tmp_path, bake.LocalDirSource(mirror["root"]), onnx=False)
    variant = mirror["multilingual"]
    changed = replace(variant, text=replace(variant.text, config=replace(variant.text.config, revision=NEW_COMMIT)))
    with pytest.raises(ConnectionError):
        bake.bake_variant(changed, tmp_path, CountingSource(mirror["root"], fail_on="tokenizer.json"), onnx=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multilingual"]
    assert_same_vectors(load_encoder("multilingual", tmp_path), multilingual_encoder, 240)


def test_unpinned_source_is_refused_unless_allowed(mirror, tmp_path):
    unpinned = replace(mirror["english"], clip=replace(mirror["english"].clip, weights=replace(
        mirror["english"].clip.weights, sha256=None, revision=None)))
    sha = mirror["english"].clip.weights.sha256
    with pytest.raises(bake.UnpinnedSource, match=sha):
        bake.bake_variant(unpinned, tmp_path, bake.LocalDirSource(mirror["root"]), onnx=False)
    assert list(tmp_path.iterdir()) == []
    path = bake.bake_variant(unpinned, tmp_path, bake.LocalDirSource(mirror["root"]), allow_unpinned=True, onnx=False)
    assert json.loads((path / "manifest.json").read_text())["sources"][0]["sha256_seen"] == sha


def test_every_real_registry_file_is_pinned_or_left_to_the_lock():
    """serve.sh and the image build bake without --allow-unpinned: every file's bytes must be fixed, in the registry
    (english, multilingual: published pins) or by models/pins.lock.json (SigLIP 2: nothing published to pin)."""
    lock = pins.load()
    for name in registry.names():
        for source in bake.all_sources(registry.get(name), lock):
            if name.startswith("siglip2-"):
                assert not registry.get(name).clip.weights.pinned  # nothing published: the lock's to fix
            else:
                assert source.pinned, f"{name}: {source.repo or source.url} {source.filename} is not pinned"
    english = registry.get("english").clip.weights
    assert english.sha256 == "25802f2bca7543373c773621aa896b4f0e3d0de95bf3f222e66e06afab6d6c67"
    release = registry.get("multilingual").clip.weights
    assert release.sha256.startswith(release.sha256_prefix) and release.sha256_prefix == "699c4b84"


@pytest.mark.parametrize("source, pinned_", [
    (Source("f", repo="o/r"), False),
    (Source("f", repo="o/r", revision="main"), False),  # a branch moves
    (Source("f", repo="o/r", revision="8604507"), False),  # a short hash is not a pin
    (Source("f", repo="o/r", revision=COMMIT), True),
    (Source("f", repo="o/r", sha256="ab" * 32), True),
    (Source("f", url="https://example.invalid/f", sha256_prefix="abcdef01"), False),
    (Source("f", url="https://example.invalid/f", sha256="ab" * 32), True),
])
def test_a_file_is_pinned_by_a_full_sha256_or_a_full_commit(source, pinned_):
    assert source.pinned is pinned_


def test_the_cli_refuses_a_download_that_differs_from_the_real_pin(tmp_path):
    """The real registry entry, baked from a mirror holding other bytes: stops, naming file, expected and got."""
    mirror = tmp_path / "mirror/timm/vit_base_patch32_clip_224.laion400m_e32"
    mirror.mkdir(parents=True)
    (mirror / "open_clip_model.safetensors").write_bytes(b"not weights")
    got = sha256_file(mirror / "open_clip_model.safetensors")
    with pytest.raises(bake.ChecksumMismatch) as caught:
        bake.main(["--variant", "english", "--out", str(tmp_path / "out"), "--from-dir", str(tmp_path / "mirror")])
    message = str(caught.value)
    assert "open_clip_model.safetensors" in message and registry.ENGLISH_SHA256 in message and got in message
    assert not (tmp_path / "out/english").exists()


def test_a_file_pinned_by_revision_alone_bakes_and_records_its_sha256(mirror, tmp_path):
    variant = mirror["multilingual"]
    config = replace(variant.text.config, sha256=None)  # pinned by its commit only
    assert config.pinned
    variant = replace(variant, text=replace(variant.text, config=config))
    path = bake.bake_variant(variant, tmp_path, bake.LocalDirSource(mirror["root"]), onnx=False)
    [record] = [r for r in json.loads((path / "manifest.json").read_text())["sources"] if r["role"] == "M-CLIP config"]
    assert record["revision"] == COMMIT and "sha256" not in record
    assert record["sha256_seen"] == sha256_file(mirror["root"] / "org/mclip/config.json")


class FakeHub:
    """Loopback stand-in for the hub's resolve endpoint and a release-download host, serving `root`.

    `/<org>/<repo>/resolve/<revision>/<file>` -> root/org/repo/file (any revision resolves to COMMIT);
    `/releases/<file>` -> root/file. Records every request.
    """

    COMMIT = COMMIT

    def __init__(self, root: Path):
        import http.server
        import threading

        fake = self
        self.requests: list[tuple[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.reply(body=False)

            def do_GET(self):
                self.reply(body=True)

            def reply(self, body: bool):
                fake.requests.append((self.command, self.path))
                parts = self.path.split("/")
                path = root / parts[-1] if parts[1] == "releases" else root / parts[1] / parts[2] / parts[-1]
                if parts[1] != "releases" and parts[4] not in (FakeHub.COMMIT, "main"):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RevisionNotFound")
                    self.end_headers()
                    return
                if not path.is_file():
                    self.send_response(404)
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", FakeHub.COMMIT)
                self.send_header("ETag", f'"{sha256_file(path)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def gets(self) -> list[str]:
        return [p for method, p in self.requests if method == "GET"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_hub_source_downloads_resolves_revisions_and_caches(mirror, multilingual_encoder, tmp_path, monkeypatch):
    """The real HubSource (hf_hub_download + HTTPS release download) against a loopback fake hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # HubSource switches these; monkeypatch puts them back
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = FakeHub(mirror["root"])
    try:
        variant = mirror["multilingual"]
        weights = variant.clip.weights
        variant = replace(variant, clip=replace(variant.clip, weights=replace(
            weights, url=f"{hub.url}/releases/{weights.filename}")))

        def source():
            return bake.HubSource(cache_dir=tmp_path / "url-cache", hub_cache_dir=tmp_path / "hf-cache",
                                  endpoint=hub.url, timeout_s=10)

        path = bake.bake_variant(variant, tmp_path / "a", source(), onnx=False)
        assert len(hub.gets()) == 6  # release .pt, weights, 2 configs, 2 tokenizer files
        records = json.loads((path / "manifest.json").read_text())["sources"]
        hub_records = [r for r in records if "repo" in r]
        assert hub_records and all(r["resolved_revision"] == FakeHub.COMMIT for r in hub_records)
        assert all(r["revision"] == COMMIT for r in hub_records)  # the pin, as written
        assert_same_vectors(load_encoder("multilingual", tmp_path / "a"), multilingual_encoder, 240)

        before = len(hub.requests)
        assert bake.bake_variant(variant, tmp_path / "a", source(), onnx=False) is None
        assert len(hub.requests) == before  # up to date: not even a HEAD

        bake.bake_variant(variant, tmp_path / "b", source(), onnx=False)  # fresh bundle, warm caches
        assert len(hub.gets()) == 6  # nothing downloaded twice
    finally:
        hub.close()


def test_a_pinned_revision_the_hub_does_not_know_stops_the_bake(mirror, tmp_path, monkeypatch):
    """Never a fallback to an unpinned download: the message names the file and the revision to correct."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = FakeHub(mirror["root"])
    try:
        weights = replace(mirror["english"].clip.weights, revision=NEW_COMMIT)
        variant = replace(mirror["english"], clip=replace(mirror["english"].clip, weights=weights))
        source = bake.HubSource(cache_dir=tmp_path / "url-cache", hub_cache_dir=tmp_path / "hf-cache",
                                endpoint=hub.url, timeout_s=10)
        with pytest.raises(bake.RevisionUnavailable, match=f"org/english open_clip_model.safetensors.*{NEW_COMMIT}"):
            bake.bake_variant(variant, tmp_path / "out", source, onnx=False)
        assert hub.gets() == []  # nothing downloaded
        assert not (tmp_path / "out/english").exists()
    finally:
        hub.close()


def test_serve_sh_and_the_image_build_bake_only_pinned_files():
    root = Path(__file__).resolve().parents[2]
    for script in ("serve.sh", "Dockerfile"):
        bake_lines = [line for line in (root / script).read_text().splitlines()
                      if "models.bake" in line and not line.lstrip().startswith("#")]
        assert bake_lines, script
        assert not any("--allow-unpinned" in line for line in bake_lines), script
