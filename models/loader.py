"""`load_encoder`: a bundle on disk -> a ready `Encoder`. Never downloads.

Everything comes from the bundle's manifest (architecture configs, preprocessing, file names),
so a bundle for an architecture this code has never heard of loads as long as open_clip can
build it from its config; and the loader cannot tell a tiny random bundle from a baked one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any

from safetensors import safe_open

import models  # noqa: F401  (offline env vars before torch/transformers imports)
from models import precision as precision_mod
from models import registry
from models.bundle import BundleError, check_bundle, prefetch, weights_fingerprint
from models.encoder import Encoder, ModelInfo
from models.threads import cpu_budget

RUNTIMES = ("auto", "torch", "onnx")


def load_encoder(variant: str, model_dir: str | Path, threads: int | None = None,
                 precision: str = "fp32", runtime: str = "torch", device: str = "cpu",
                 image_decode: str = "cpu") -> Encoder:
    """Load `model_dir/<variant>` and return its `Encoder`.

    Fails at once with `BundleError` (a `FileNotFoundError`) naming the missing file and the
    bake command, or `UnknownVariant` listing the valid names. `threads`: intra-op threads
    (default: the CPUs this container really has). `precision`: "fp32" (exact to the reference
    libraries), "bf16" (torch; weights converted once here), "int8" (ONNX; the bundle's int8 graphs)
    or "auto" (bf16 where the CPU computes it natively, else fp32; fp16 on a GPU), see models.precision.
    `runtime`: "torch", "onnx" (ONNX Runtime, the bundle's exported graphs) or "auto" (`resolve_runtime`).
    `device`: "cpu", "cuda" (DeviceUnavailable without a GPU) or "auto" (models.device). `image_decode`: where
    JPEGs are decoded, "cpu", "gpu" (DeviceUnavailable without a GPU) or "auto" (models.device_jpeg).
    """
    with _LOADING:
        return _load_encoder(variant, model_dir, threads, precision, runtime, device, image_decode)


# One load at a time in a process: building a tower patches torch process-wide (models.weights.parameters_on_meta,
# models.lean_imports), so two loads at once (an engine loading in the background while a batch job or a test
# loads in the foreground) broke each other and every later load ("the checkpoint lacks ..."). Loads are rare.
_LOADING = threading.RLock()


def _load_encoder(variant: str, model_dir: str | Path, threads: int | None, precision: str, runtime: str,
                  device: str, image_decode: str) -> Encoder:
    from models.device import require_requested_gpu, resolve_device

    require_requested_gpu(device, image_decode)
    device = resolve_device(device)
    bundle_path = Path(model_dir) / variant
    if not bundle_path.exists() and variant not in registry.names():
        registry.get(variant)  # raises UnknownVariant with the list of names
    bundle_dir, manifest = check_bundle(model_dir, variant)
    runtime, resolved = resolve_runtime(runtime, precision, manifest, bundle_dir, device=device)
    if runtime == "onnx":
        return _load_onnx(bundle_dir, manifest, resolved, threads)
    return _load_torch(bundle_dir, manifest, resolved, threads, device, image_decode)


def resolve_runtime(runtime: str, precision: str, manifest: dict[str, Any], bundle_dir: Path,
                    cpuinfo: Path = precision_mod.CPUINFO, device: str = "cpu") -> tuple[str, str]:
    """(runtime, precision) in force. `auto`: torch where the precision is bf16 (a CPU with native bf16, or
    asked for), ONNX Runtime otherwise when the bundle has its graphs (fp32 to within 1e-5 of torch, faster
    on CPUs without native bf16; bench/RESULTS.md), else torch. int8 exists only as ONNX graphs. On a GPU: torch
    (the ONNX graphs run on ONNX Runtime's CPU provider only)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if device == "cuda":
        if runtime == "onnx" or precision == "int8":
            raise BundleError("on a GPU the towers run on torch: RUNTIME=onnx and PRECISION=int8 are CPU options")
        return "torch", precision_mod.resolve(precision, cpuinfo, device)
    onnx = manifest.get("onnx")
    wanted = "int8" if precision == "int8" else precision_mod.resolve(precision, cpuinfo)
    if runtime == "auto":
        runtime = "onnx" if onnx and (wanted == "int8" or (wanted == "fp32")) else "torch"
    if runtime == "torch" and wanted == "int8":
        raise BundleError("PRECISION=int8 runs on ONNX Runtime: set RUNTIME=onnx (or auto)")
    if runtime == "onnx":
        if not onnx:
            raise BundleError(f"{bundle_dir} has no ONNX graphs (baked before they were added): re-bake it, or run "
                              "with RUNTIME=torch (or auto)")
        if precision == "bf16":
            raise BundleError("PRECISION=bf16 runs on torch: ONNX Runtime here has fp32 and int8")
        if precision == "auto":
            wanted = "fp32"
        if wanted == "int8" and not onnx.get("int8", {}).get("written"):
            reason = onnx.get("int8", {}).get("reason", "the bundle was made without int8 graphs")
            raise BundleError(f"{bundle_dir}: no int8 graphs ({reason}); use PRECISION=fp32 or auto")
    return runtime, wanted


# Bytes in memory per byte of the files a runtime maps, and a fixed part (the tokenizer, buffers, the runtime's
# own structures). Measured on real-size bundles after a batch of 16 images and texts (bench/bench_variants.py,
# bench/RESULTS.md "Model variants"): torch keeps about its weights (english 1.3 GB RSS for 0.58 GB of weights
# with torch's own 0.7 GB; so400m 4.4 GB for 4.4 GB), ONNX Runtime its weights plus its arena's activations, which
# grow with the model (english 1.0x, siglip2-b16 1.3x, so400m 1.65x: 7.5 GB for 4.4 GB).
_MEMORY_FACTOR = {"torch": 1.05, "onnx": 1.3}
_MEMORY_FIXED = 96 * 1024 * 1024


def memory_needed(variant: str, model_dir: str | Path, precision: str = "fp32", runtime: str = "torch",
                  device: str = "cpu") -> int:
    """Bytes the model takes in memory once loaded, from its bundle's manifest alone (milliseconds, no torch): the
    weight files (or ONNX graphs) the resolved runtime and precision read, with their runtime's overhead. What the
    memory budget of several models counts (engine.models)."""
    from models.device import resolve_device

    bundle_dir, manifest = check_bundle(model_dir, variant)
    device = resolve_device(device)
    runtime, resolved = resolve_runtime(runtime, precision, manifest, bundle_dir, device=device)
    sizes = {name: record["size"] for name, record in manifest["files"].items()}
    if runtime == "onnx":
        files = manifest["onnx"]["int8"] if resolved == "int8" else manifest["onnx"]
        mapped = [files[k]["file"] + ext for k in ("image", "text") for ext in ("", ".data")]
    else:
        key = "weights_bf16" if resolved == "bf16" else "weights"
        mapped = [section.get(key) or section.get("weights") for section in (manifest["clip"], manifest["text"])]
        mapped = [m for m in mapped if m]
    tokenizer = sum(size for name, size in sizes.items() if name.startswith("tokenizer"))
    if device == "cuda":  # the weights live in GPU memory; the process keeps the tokenizer and buffers
        return _MEMORY_FIXED + tokenizer
    return int(_MEMORY_FACTOR[runtime] * sum(sizes.get(name, 0) for name in mapped)) + _MEMORY_FIXED + tokenizer


def _load_torch(bundle_dir: Path, manifest: dict[str, Any], resolved: str, threads: int | None,
                device: str = "cpu", image_decode: str = "cpu") -> Encoder:
    from models.threads import configure_torch_threads

    clip, text = dict(manifest["clip"]), dict(manifest["text"])
    for section in (clip, text):  # bf16: the bundle's bf16 copies where it has them (no conversion here)
        if resolved == "bf16" and section.get("weights_bf16"):
            section["weights"] = section["weights_bf16"]
    prefetch([bundle_dir / clip["weights"]] + ([bundle_dir / text["weights"]] if "weights" in text else []))
    configure_torch_threads(threads)

    from models import openclip_tower

    own_text = text["type"] == "open_clip"
    model = openclip_tower.load_model(clip["config"], bundle_dir / clip["weights"], with_text=own_text)
    dtype = precision_mod.torch_dtype(resolved)
    model.to(dtype)  # converts fp32 weights (bundles without bf16 copies) and the buffers
    device_jpeg = None
    if device == "cuda":  # copied tensor by tensor from the file's mmap: no second full copy in CPU memory
        from models.device import exact_fp32_on_gpu
        from models.device_jpeg import device_jpeg_for

        if resolved == "fp32":
            exact_fp32_on_gpu()
        (model if own_text else model.visual).to(device)
        device_jpeg = device_jpeg_for(manifest["preprocess"], image_decode)
    image_tower = openclip_tower.OpenClipImageTower(model, manifest["preprocess"], device_jpeg)
    if own_text and "hf_tokenizer" in text:
        text_tower = openclip_tower.HfTokenizerTextTower(model, _bundle_tokenizer(bundle_dir, manifest))
    elif own_text:
        text_tower = openclip_tower.OpenClipTextTower(model, int(manifest["context_length"]),
                                                      text.get("tokenizer_kwargs"))
    elif text["type"] == "mclip":
        from models import mclip_tower

        text_tower = mclip_tower.load_tower(bundle_dir, text)
        text_tower.model.to(device=device, dtype=dtype)
    else:
        raise BundleError(f"{bundle_dir}/manifest.json: unknown text tower type {text['type']!r}")
    info = model_info(bundle_dir, manifest, resolved)
    if device == "cuda":
        from models.device import gpu_name

        info = dataclasses.replace(info, device="cuda", gpu=gpu_name(),
                                   image_decode="gpu" if device_jpeg is not None else "cpu")
    return Encoder(info, text_tower, image_tower)


def _load_onnx(bundle_dir: Path, manifest: dict[str, Any], resolved: str, threads: int | None) -> Encoder:
    """The bundle's ONNX graphs on ONNX Runtime: no torch imported (see models.onnx_tower)."""
    from models import onnx_tower, preprocess

    onnx = manifest["onnx"]
    files = onnx["int8"] if resolved == "int8" else onnx
    paths = {name: bundle_dir / files[name]["file"] for name in ("image", "text")}
    prefetch(list(paths.values()))
    if not preprocess.supports(manifest["preprocess"]):
        raise BundleError(f"{bundle_dir}: the ONNX runtime's preprocessing covers resize_mode shortest and squash; "
                          "this bundle needs RUNTIME=torch")
    count = threads or cpu_budget()
    # Both sessions at once: creating one is mostly ONNX Runtime pre-packing the weights, one core each, outside
    # the GIL (multilingual: 1.8 s together instead of 3.2-4.5 s one after the other, on 2 vCPUs).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="clipserve-onnx-load") as pool:
        sessions = {name: pool.submit(onnx_tower.session, path, count) for name, path in paths.items()}
        image_graph, graph = sessions["image"].result(), sessions["text"].result()
    image_tower = onnx_tower.OnnxImageTower(image_graph, manifest["preprocess"])
    text = manifest["text"]
    if "hf_tokenizer" in text:
        text_tower: Any = onnx_tower.OnnxHfTextTower(graph, _bundle_tokenizer(bundle_dir, manifest))
    elif text["type"] == "open_clip":
        text_tower = onnx_tower.OnnxClipTextTower(graph, int(manifest["context_length"]),
                                                  text.get("tokenizer_kwargs"))
    else:
        text_tower = onnx_tower.OnnxMClipTextTower(graph, bundle_dir, int(text["max_length"]))
    cosine = {k: onnx["int8"][k]["min_cosine"] for k in ("image", "text")} if resolved == "int8" else None
    info = dataclasses.replace(model_info(bundle_dir, manifest, resolved), runtime="onnx", int8_cosine=cosine)
    return Encoder(info, text_tower, image_tower)


def _bundle_tokenizer(bundle_dir: Path, manifest: dict[str, Any]) -> Any:
    """The bundle's Hugging Face tokenizer (SigLIP), checked against the ids bake recorded (BundleError if not)."""
    from models.hf_tokenizer import BundleTokenizer, TokenizerMismatch

    try:
        return BundleTokenizer(bundle_dir, manifest["text"]["hf_tokenizer"], int(manifest["context_length"]))
    except TokenizerMismatch as exc:
        raise BundleError(str(exc)) from None


def model_info(bundle_dir: Path, manifest: dict[str, Any], precision: str = "fp32") -> ModelInfo:
    bias = manifest.get("logit_bias")
    return ModelInfo(
        variant=manifest["variant"],
        architecture=manifest["architecture"],
        text_tower=manifest["text"]["name"],
        image_tower=manifest["clip"]["name"],
        dim=int(manifest["dim"]),
        image_size=int(manifest["preprocess"]["image_size"]),
        context_length=int(manifest["context_length"]),
        logit_scale=read_logit_scale(bundle_dir, manifest["logit_scale"]),
        precision=precision,
        weights=weights_fingerprint(manifest),
        logit_bias=None if bias is None else read_scalar(bundle_dir, bias),
        score_kind="softmax" if bias is None else "sigmoid",
        license=manifest.get("license", ""),
    )


def read_logit_scale(bundle_dir: Path, spec: dict[str, Any]) -> float:
    """The cosine multiplier: exp of the stored (log-space) CLIP temperature."""
    value = read_scalar(bundle_dir, spec)
    return math.exp(value) if spec.get("stored_as", "log") == "log" else value


def read_scalar(bundle_dir: Path, spec: dict[str, Any]) -> float:
    """One number kept in a weights file (the temperature, SigLIP's logit bias)."""
    with safe_open(str(bundle_dir / spec["file"]), framework="numpy") as f:
        return float(f.get_tensor(spec["key"]).reshape(-1)[0])
