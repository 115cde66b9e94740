"""What goes into a bundle and its manifest: shared by `models.bake` (real weights) and
`models.tiny` (random weights), so both write exactly the same layout.

Manifest (format 1), beside the files it lists:
    variant, architecture, dim, context_length, origin
    clip:        name, arch, pretrained, config (open_clip model config), weights (file)
    text:        {type: open_clip, name, tokenizer_kwargs}                       the CLIP model's own text tower
              or {type: mclip, name, config, base_config, weights, tokenizer: {class}, max_length}
    preprocess:  image_size, mean, std, interpolation, resize_mode
    logit_scale: file, key, stored_as ("log": the multiplier is exp(value))
    files:       name -> {sha256, size}          (filled by bundle.publish)
    sources:     pinned origins of the weights, with the sha256 actually seen
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from models.registry import Variant

CLIP_WEIGHTS = "open_clip_model.safetensors"
CLIP_VISUAL_WEIGHTS = "open_clip_visual.safetensors"  # image-only variants: no unused text tower on disk
MCLIP_WEIGHTS = "mclip_text.safetensors"


def clip_weights_name(variant: Variant) -> str:
    return CLIP_WEIGHTS if variant.text is None else CLIP_VISUAL_WEIGHTS


def clip_state_to_save(model: nn.Module, image_only: bool) -> dict[str, torch.Tensor]:
    """The open_clip state dict to bake: all of it, or only `visual.*` + `logit_scale`."""
    state = model.state_dict()
    if image_only:
        state = {k: v for k, v in state.items() if k.startswith("visual.") or k == "logit_scale"}
    return state


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Contiguous fp32 copies (safetensors refuses shared or strided storage)."""
    save_file({k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in state.items()}, str(path))


def build_manifest(variant: Variant, clip_config: dict[str, Any], *, origin: str,
                   sources: list[dict[str, Any]], mclip: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest for `variant` (without `files`, which `bundle.publish` fills from disk).

    `mclip` (multilingual only): {config, base_config, tokenizer_class}.
    """
    clip = variant.clip
    clip_name = f"{clip.arch} ({clip.pretrained_tag})"
    image_size = clip_config["vision_cfg"]["image_size"]
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    manifest: dict[str, Any] = {
        "variant": variant.name,
        "origin": origin,
        "dim": clip_config["embed_dim"],
        "clip": {"name": clip_name, "arch": clip.arch, "pretrained": clip.pretrained_tag,
                 "config": clip_config, "weights": clip_weights_name(variant)},
        "preprocess": {"image_size": image_size, "mean": list(clip.mean), "std": list(clip.std),
                       "interpolation": clip.interpolation, "resize_mode": clip.resize_mode},
        "logit_scale": {"file": clip_weights_name(variant), "key": "logit_scale", "stored_as": "log"},
        "sources": sources,
    }
    if variant.text is None:
        manifest["architecture"] = clip.arch
        manifest["context_length"] = clip_config["text_cfg"].get("context_length", 77)
        manifest["text"] = {"type": "open_clip", "name": clip_name,
                            "tokenizer_kwargs": clip_config["text_cfg"].get("tokenizer_kwargs", {})}
    else:
        if mclip is None:
            raise ValueError(f"variant {variant.name!r} has an M-CLIP text tower: pass mclip=")
        text_name = variant.text.repo
        manifest["architecture"] = f"{text_name.split('/')[-1]} + {clip.arch}"
        manifest["context_length"] = variant.text.max_length
        from models.mclip_tower import mclip_dims

        text_dim = mclip_dims(mclip["config"])[1]
        if text_dim != clip_config["embed_dim"]:
            raise ValueError(f"M-CLIP output ({text_dim}-d) does not match the image tower "
                             f"({clip_config['embed_dim']}-d)")
        manifest["text"] = {"type": "mclip", "name": text_name, "config": mclip["config"],
                            "base_config": mclip["base_config"], "weights": MCLIP_WEIGHTS,
                            "tokenizer": {"class": mclip["tokenizer_class"]},
                            "max_length": variant.text.max_length}
    return manifest
