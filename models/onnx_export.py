"""The towers as ONNX graphs, written into a bundle at bake (and tiny) time, checked before they are kept.

Each tower is exported with torch's dynamo exporter (the legacy one fails on open_clip's attention):
the image tower with a dynamic batch (timm's MAP-pooled SigLIP towers included); open_clip's text tower
with a dynamic batch *and* length, taking token ids already cut after the batch's longest EOT (the
runtime cuts them, as the torch tower does); SigLIP's text tower with a dynamic batch on the full
context (no causal mask: padding is part of the input); M-CLIP's XLM-R + mean pooling + linear map
with dynamic batch and length (truncation happens in the tokenizer). Before a graph is written into
the manifest, ONNX Runtime runs it on probe inputs (texts
of several lengths, one over the context, images) and its normalized vectors must equal the torch
tower's within EXPORT_TOLERANCE, else the bake stops.

int8 (PRECISION=int8) is quantized here, never at start: ONNX Runtime's dynamic quantization (QInt8
weights of MatMul/Gemm, activations quantized per batch). Trained CLIP towers have activation outliers
that random weights lack, so each int8 tower's cosine to its fp32 graph on the probe set is measured
and the int8 files are written only if every tower's minimum reaches INT8_MIN_COSINE; otherwise the
manifest says why and PRECISION=int8 refuses that bundle.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
EXPORT_TOLERANCE = 1e-5  # max abs difference of normalized vectors, ONNX fp32 vs torch fp32
INT8_MIN_COSINE = 0.99  # the int8 towers are kept only if no probe falls below this cosine to fp32
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
PROBE_TEXTS = ("a cat", "a photo of a red bicycle leaning on a wall", "zwei Hunde spielen im Schnee",
               "一只猫坐在窗台上", " ".join(["a very long caption"] * 200))
_MAX_BATCH = 1024


class ExportCheckFailed(RuntimeError):
    """An exported graph does not give the torch tower's vectors: the bundle is not written."""


class ImageGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)


class ClipTextGraph(nn.Module):
    """open_clip's text tower on tokens (N, L), L = longest EOT + 1 (the same computation as
    `openclip_tower.encode_text_trimmed`, with L taken from the input's shape)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        m = self.model
        length = tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = text_global_pool(m.ln_final(x), tokens, m.text_pool_type, eos_token_id=m.text_eos_id)
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return x


class FullContextTextGraph(nn.Module):
    """open_clip's text tower on tokens (N, context) padded to the context (SigLIP's tower pools the last one)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def export_bundle(staging: Path, manifest: dict[str, Any], *, int8: bool) -> dict[str, Any]:
    """Export, check and (with `int8`) quantize the staged bundle's towers; the manifest with its `onnx` section."""
    from models import openclip_tower

    started = time.monotonic()
    clip, text = manifest["clip"], manifest["text"]
    own_text = text["type"] == "open_clip"
    model = openclip_tower.load_model(clip["config"], staging / clip["weights"], with_text=own_text)
    image_tower = openclip_tower.OpenClipImageTower(model, manifest["preprocess"])
    pixels = torch.stack([image_tower.prepare(img) for img in probe_images()])
    checks = {"image": _export_image(model, staging / IMAGE_FILE, pixels)}
    feeds = {"image": {"pixels": pixels.numpy()}}
    if "hf_tokenizer" in text:
        from models.hf_tokenizer import BundleTokenizer

        tokenizer = BundleTokenizer(staging, text["hf_tokenizer"], int(manifest["context_length"]))
        tower = openclip_tower.HfTokenizerTextTower(model, tokenizer)
        prepared = [tower.prepare(t) for t in PROBE_TEXTS]
        checks["text"] = _export_full_context_text(model, staging / TEXT_FILE, tower, prepared)
        feeds["text"] = {"tokens": tokenizer.rows(prepared)}
    elif own_text:  # the tower runs its own (sequence-first) copy; the graph is exported from `model`
        tower = openclip_tower.OpenClipTextTower(openclip_tower.load_model(
            clip["config"], staging / clip["weights"], with_text=True), int(manifest["context_length"]),
            text.get("tokenizer_kwargs"))
        prepared = [tower.prepare(t) for t in PROBE_TEXTS]
        checks["text"] = _export_clip_text(model, staging / TEXT_FILE, tower, prepared)
        feeds["text"] = {"tokens": clip_token_batch(prepared)}
    else:
        from models import mclip_tower

        tower = mclip_tower.load_tower(staging, text)
        prepared = [tower.prepare(t) for t in PROBE_TEXTS]
        checks["text"] = _export_mclip_text(tower, staging / TEXT_FILE, prepared)
        feeds["text"] = mclip_batch(prepared, tower.tokenizer.pad_token_id)
    section: dict[str, Any] = {"opset": OPSET, "exporter": f"torch {torch.__version__} dynamo",
                               "image": {"file": IMAGE_FILE, "max_abs_diff": checks["image"]},
                               "text": {"file": TEXT_FILE, "max_abs_diff": checks["text"],
                                        "kind": _text_kind(text)}}
    if int8:
        section["int8"] = _quantize(staging, section, feeds)
    log.info("ONNX export of %s: %.1f s, max abs diff %s", manifest["variant"], time.monotonic() - started, checks)
    return {**manifest, "onnx": section}


def _text_kind(text: dict[str, Any]) -> str:
    return "hf" if "hf_tokenizer" in text else "open_clip" if text["type"] == "open_clip" else "mclip"


def probe_images() -> list:
    """Photo-like and noisy images of several shapes (the check's image inputs)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    images = []
    for height, width in ((240, 320), (512, 384), (200, 200)):
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([128 + 100 * np.sin(x / (17 + 5 * c) + c) * np.cos(y / 23) for c in range(3)], axis=-1)
        pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


class _DropLibraryRecords(logging.Filter):
    """Records of torch's exporter and ONNX Runtime's quantizer (their progress, and the quantizer's advice to run
    another project's pre-processing script): nothing a person baking or serving a bundle can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.pathname for part in ("onnxruntime", "torch/onnx", "onnxscript"))


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """While exporting and quantizing: the exporter's printed progress, its warnings and the quantizer's log lines
    stay off the console (our own check results are logged by this module). A root handler is put in place if
    there is none, so a library's `logging.warning` cannot configure one that prints to stderr."""
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    drop = _DropLibraryRecords()
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(drop)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], dims: dict[str, dict[int, Any]]) -> None:
    module.eval()
    with torch.inference_mode(False), torch.no_grad(), quiet_libraries():
        program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=["features"],
                                    dynamic_shapes=dims, opset_version=OPSET, verbose=False)
    # Weights as external data (PATH.data) for every graph: ONNX Runtime then maps them instead of parsing them
    # out of the protobuf (english image tower: session created in 0.25 s instead of 1.0 s, same speed), and a
    # graph over 2 GB (XLM-R large) could not be one protobuf anyway.
    program.save(str(path), external_data=True)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _compare(name: str, torch_out: np.ndarray, onnx_out: np.ndarray) -> float:
    diff = float(np.abs(_unit(torch_out) - _unit(onnx_out)).max())
    if not diff <= EXPORT_TOLERANCE:
        raise ExportCheckFailed(f"the exported {name} graph differs from the torch tower by {diff:.2e} "
                                f"(tolerance {EXPORT_TOLERANCE}): not written")
    return diff


def _export_image(model: nn.Module, path: Path, batch: torch.Tensor) -> float:
    batch_dim = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    _export(ImageGraph(model), (batch[:2],), path, ["pixels"], {"pixels": {0: batch_dim}})
    with torch.inference_mode():
        expected = model.encode_image(batch).float().numpy()
    session = _session(path)
    got = np.concatenate([session.run(None, {"pixels": batch[i:i + 1].numpy()})[0] for i in range(len(batch))]
                         + [session.run(None, {"pixels": batch.numpy()})[0]])
    return _compare("image", np.concatenate([expected, expected]), got)


def clip_token_batch(items: list) -> np.ndarray:
    """Token ids (N, L) zero-padded to the longest item, L = longest EOT + 1 (what the text graph takes)."""
    length = max(len(item.ids) for item in items)
    tokens = np.zeros((len(items), length), dtype=np.int64)
    for i, item in enumerate(items):
        tokens[i, :len(item.ids)] = item.ids
    return tokens


def _export_clip_text(model: nn.Module, path: Path, tower: Any, prepared: list) -> float:
    dims = {"tokens": {0: torch.export.Dim("batch", min=1, max=_MAX_BATCH),
                       1: torch.export.Dim("length", min=2, max=tower.context_length)}}
    example = torch.from_numpy(clip_token_batch(prepared[:2]))
    _export(ClipTextGraph(model), (example,), path, ["tokens"], dims)
    session = _session(path)
    expected = tower.encode(prepared)
    got = np.concatenate([session.run(None, {"tokens": clip_token_batch([p])})[0] for p in prepared])
    together = session.run(None, {"tokens": clip_token_batch(prepared)})[0]
    return _compare("text", np.concatenate([expected, expected]), np.concatenate([got, together]))


def _export_full_context_text(model: nn.Module, path: Path, tower: Any, prepared: list) -> float:
    tokens = tower.tokenizer.rows(prepared)
    dims = {"tokens": {0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)}}
    _export(FullContextTextGraph(model), (torch.from_numpy(tokens[:2]),), path, ["tokens"], dims)
    session = _session(path)
    expected = tower.encode(prepared)
    got = np.concatenate([session.run(None, {"tokens": tokens[i:i + 1]})[0] for i in range(len(prepared))])
    together = session.run(None, {"tokens": tokens})[0]
    return _compare("text", np.concatenate([expected, expected]), np.concatenate([got, together]))


def mclip_batch(items: list, pad_id: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask (N, L) padded right to the longest item, as the tokenizer pads them."""
    length = max(len(item.ids) for item in items)
    ids = np.full((len(items), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), length), dtype=np.int64)
    for i, item in enumerate(items):
        ids[i, :len(item.ids)] = item.ids
        mask[i, :len(item.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _export_mclip_text(tower: Any, path: Path, prepared: list) -> float:
    pad_id = tower.tokenizer.pad_token_id
    example = {k: torch.from_numpy(v) for k, v in mclip_batch(prepared[:2], pad_id).items()}
    batch, length = torch.export.Dim("batch", min=1, max=_MAX_BATCH), torch.export.Dim("length", min=2,
                                                                                         max=tower.max_length)
    dims = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    _export(tower.model, (example["input_ids"], example["attention_mask"]), path, ["input_ids", "attention_mask"],
            dims)
    session = _session(path)
    expected = tower.encode(prepared)
    got = np.concatenate([session.run(None, mclip_batch([p], pad_id))[0] for p in prepared])
    together = session.run(None, mclip_batch(prepared, pad_id))[0]
    return _compare("text", np.concatenate([expected, expected]), np.concatenate([got, together]))


def _quantize(staging: Path, section: dict[str, Any], feeds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """int8 copies of both graphs, kept only if every probe's cosine to fp32 reaches INT8_MIN_COSINE."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    result: dict[str, Any] = {"min_cosine_required": INT8_MIN_COSINE}
    cosines = {}
    for name in ("image", "text"):
        fp32 = staging / section[name]["file"]
        int8 = staging / section[name]["file"].replace(".onnx", ".int8.onnx")
        with quiet_libraries():
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, use_external_data_format=True)
        ref = _session(fp32).run(None, feeds[name])[0]
        got = _session(int8).run(None, feeds[name])[0]
        cosines[name] = float((_unit(ref) * _unit(got)).sum(axis=1).min())
        result[name] = {"file": int8.name, "min_cosine": round(cosines[name], 6)}
    if min(cosines.values()) < INT8_MIN_COSINE:
        for name in ("image", "text"):
            (staging / result[name]["file"]).unlink(missing_ok=True)
            (staging / (result[name]["file"] + ".data")).unlink(missing_ok=True)
        worst = min(cosines, key=cosines.get)
        reason = (f"int8 {worst} tower reached cosine {cosines[worst]:.4f} to fp32 on the probe set, below "
                  f"{INT8_MIN_COSINE}: int8 files not written")
        log.info("%s", reason)  # int8 is opt-in: the manifest keeps the reason, PRECISION=int8 shows it
        return {"written": False, "reason": reason, "min_cosine": {k: round(v, 6) for k, v in cosines.items()}}
    return {"written": True, **result}
