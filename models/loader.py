"""`load_encoder`: a bundle on disk -> a ready `Encoder`. Never downloads.

Everything comes from the bundle's manifest (architecture configs, preprocessing, file names),
so a bundle for an architecture this code has never heard of loads as long as open_clip can
build it from its config; and the loader cannot tell a tiny random bundle from a baked one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors import safe_open

import models  # noqa: F401  (offline env vars before torch/transformers imports)
from models import precision as precision_mod
from models import registry
from models.bundle import BundleError, check_bundle, weights_fingerprint
from models.encoder import Encoder, ModelInfo
from models.threads import configure_torch_threads
from models.weights import prefetch


def load_encoder(variant: str, model_dir: str | Path, threads: int | None = None,
                 precision: str = "fp32") -> Encoder:
    """Load `model_dir/<variant>` and return its `Encoder`.

    Fails at once with `BundleError` (a `FileNotFoundError`) naming the missing file and the
    bake command, or `UnknownVariant` listing the valid names. `threads`: torch intra-op
    threads (default: the CPUs this container really has). `precision`: "fp32" (exact to the
    reference libraries), "bf16" (weights converted once here) or "auto" (bf16 where the CPU
    computes it natively), see models.precision.
    """
    resolved = precision_mod.resolve(precision)
    bundle_path = Path(model_dir) / variant
    if not bundle_path.exists() and variant not in registry.names():
        registry.get(variant)  # raises UnknownVariant with the list of names
    bundle_dir, manifest = check_bundle(model_dir, variant)
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
    image_tower = openclip_tower.OpenClipImageTower(model, manifest["preprocess"])
    if own_text:
        text_tower = openclip_tower.OpenClipTextTower(model, int(manifest["context_length"]),
                                                      text.get("tokenizer_kwargs"))
    elif text["type"] == "mclip":
        from models import mclip_tower

        text_tower = mclip_tower.load_tower(bundle_dir, text)
        text_tower.model.to(dtype)
    else:
        raise BundleError(f"{bundle_dir}/manifest.json: unknown text tower type {text['type']!r}")
    return Encoder(model_info(bundle_dir, manifest, resolved), text_tower, image_tower)


def model_info(bundle_dir: Path, manifest: dict[str, Any], precision: str = "fp32") -> ModelInfo:
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
    )


def read_logit_scale(bundle_dir: Path, spec: dict[str, Any]) -> float:
    """The cosine multiplier: exp of the stored (log-space) CLIP temperature."""
    with safe_open(str(bundle_dir / spec["file"]), framework="pt") as f:
        value = float(f.get_tensor(spec["key"]).reshape(-1)[0])
    return math.exp(value) if spec.get("stored_as", "log") == "log" else value
