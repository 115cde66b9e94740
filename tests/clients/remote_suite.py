"""Run by test_client_wheel.py with the python of a fresh venv that has only the client's wheel (and its extras):
every method, sync and async, against the real gunicorn. Writes what it got to OUT for the test to check.

    python remote_suite.py methods URL INPUTS OUT     # every method, sync and async
    python remote_suite.py long URL INPUTS OUT        # 10,000 texts through 429s and a restart
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import sys
from pathlib import Path

import numpy as np


def server_packages_absent() -> None:
    import importlib.util

    for name in ("torch", "flask", "handler", "engine", "models"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable in the client's venv"


def image_inputs(inputs: Path, image_url: str) -> tuple[list, list[int]]:
    """500 images from every kind of source, and which picture each one is (for the reference vectors)."""
    from PIL import Image

    files = sorted(inputs.glob("img-*.png"))
    sources, which = [], []
    for i in range(500):
        k = i % len(files)
        path = files[k]
        kind = i % 7
        if kind == 0:
            source = str(path)
        elif kind == 1:
            source = path
        elif kind == 2:
            source = path.read_bytes()
        elif kind == 3:
            source = io.BytesIO(path.read_bytes())
        elif kind == 4:
            source = Image.open(path)
            source.load()
        elif kind == 5:
            source = f"{image_url}/{path.name}"
        else:
            source = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        sources.append(source)
        which.append(k)
    return sources, which


def methods(url: str, inputs: Path, out: Path) -> None:
    import clipserve_client as cc

    server_packages_absent()
    spec = json.loads((inputs / "spec.json").read_text())
    texts = spec["texts"]
    def fresh() -> list:
        """The 500 inputs, anew for each call: a file object is read to its end by the call that sends it."""
        images, _ = image_inputs(inputs, spec["image_url"])
        images[spec["bad_index"]] = b"this is not an image"
        return images

    images, which = fresh(), image_inputs(inputs, spec["image_url"])[1]
    saved: dict[str, np.ndarray] = {}
    report: dict[str, object] = {"which": which}
    with cc.Client(url, concurrency=4) as clip:
        report["health"] = clip.health()
        report["models"] = [m["id"] for m in clip.models()]
        report["info_model"] = clip.info()["model"]["variant"]
        saved["texts"] = clip.embed_text(texts, progress=True).vectors
        result = clip.embed_image(images, progress=True)
        saved["images"] = result.vectors
        report["image_errors"] = [[e.index, e.code] for e in result.errors]
        mixed = clip.embed_mixed(texts[:5], fresh()[:5])
        saved["mixed_texts"], saved["mixed_images"] = mixed.texts.vectors, mixed.images.vectors
        scores = clip.score(["a red square", "a blue circle"], fresh()[:10])
        saved["score_cosine"], saved["score_probs"] = scores.cosine, scores.probs
        zero = clip.zero_shot(fresh()[:10], ["red", "blue"], templates=["a photo of something {}."])
        report["zero_shot_best"] = zero.best
        saved["zero_shot_probs"] = zero.probs
        written = clip.upsert([{"id": "new-1", "text": "a green triangle", "metadata": {"shop": "x"}},
                               {"id": "new-2", "image": fresh()[0], "metadata": {"shop": "y"}}])
        report["upserted"] = written.written
        report["upsert_errors"] = [[e.index, e.code] for e in written.errors]
        report["search_text"] = [h.id for h in clip.search("a green triangle", top_k=3)]
        report["search_vector"] = [h.id for h in clip.search(vector=saved["texts"][0], top_k=3)]
        report["deleted"] = clip.delete(["new-1", "new-2"])
        report["search_after_delete"] = [h.id for h in clip.search("a green triangle", top_k=3)]
        try:
            clip.embed_text(["x"], model="no-such-model")
        except cc.UnknownModel as exc:
            report["unknown_model"] = exc.code

    async def run_async() -> None:
        async with cc.AsyncClient(url, concurrency=4) as clip:
            report["async_health"] = await clip.health()
            report["async_models"] = [m["id"] for m in await clip.models()]
            saved["async_texts"] = (await clip.embed_text(texts)).vectors
            result = await clip.embed_image(fresh())
            saved["async_images"] = result.vectors
            report["async_image_errors"] = [[e.index, e.code] for e in result.errors]
            mixed = await clip.embed_mixed(texts[:5], fresh()[:5])
            saved["async_mixed_texts"], saved["async_mixed_images"] = mixed.texts.vectors, mixed.images.vectors
            saved["async_score_cosine"] = (await clip.score(["a red square", "a blue circle"], fresh()[:10])).cosine
            zero = await clip.zero_shot(fresh()[:10], ["red", "blue"], templates=["a photo of something {}."])
            saved["async_zero_shot_probs"] = zero.probs
            report["async_upserted"] = (await clip.upsert([{"id": "new-3", "text": "a green triangle"}])).written
            report["async_search_text"] = [h.id for h in await clip.search("a green triangle", top_k=3)]
            report["async_deleted"] = await clip.delete(["new-3"])
            compat = cc.CompatService(clip)
            saved["compat_text"] = await compat.encode_text(texts[0])
            saved["compat_batch_images"] = await compat.encode_batch_images(fresh()[:3])
            report["compat_similarity"] = await compat.compute_similarity(saved["compat_text"],
                                                                         saved["compat_batch_images"][0])
            report["compat_info"] = (await compat.get_model_info())["variant"]

    asyncio.run(run_async())
    np.savez(out / "methods.npz", **saved)
    (out / "methods.json").write_text(json.dumps(report))


def long(url: str, inputs: Path, out: Path) -> None:
    """10,000 texts with the default retry policy, while the test rate-limits the service and restarts it."""
    import clipserve_client as cc

    texts = json.loads((inputs / "spec.json").read_text())["long_texts"]
    reasons: collections.Counter[str] = collections.Counter()
    with cc.Client(url, concurrency=8, on_retry=lambda reason: reasons.update([reason])) as clip:
        clip.info()
        print("started", flush=True)
        result = clip.embed_text(texts)
    np.save(out / "long.npy", result.vectors)
    (out / "long.json").write_text(json.dumps({"retries": dict(reasons), "errors": len(result.errors)}))


if __name__ == "__main__":
    {"methods": methods, "long": long}[sys.argv[1]](sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
