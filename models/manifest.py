"""What goes into a bundle and its manifest: shared by `models.bake` (real weights) and
`models.tiny` (random weights), so both write exactly the same layout.

Manifest (format 1), beside the files it lists:
    variant, architecture, dim, context_length, origin, license
    clip:        name, arch, pretrained, config (open_clip model config), weights (file), weights_bf16 (file)
    text:        {type: open_clip, name, tokenizer_kwargs}                       the CLIP model's own text tower
                   [+ hf_tokenizer: {file, clean, head, tail, pad_id, golden}]  with a Hugging Face tokenizer (SigLIP)
              or {type: mclip, name, config, base_config, weights, weights_bf16, tokenizer: {class}, max_length}
    preprocess:  image_size, mean, std, interpolation, resize_mode   (open_clip's pretrained cfg for the tag)
    logit_scale: file, key, stored_as ("log": the multiplier is exp(value))
    logit_bias:  file, key                 (SigLIP: scores are sigmoid(logit_scale * cos + logit_bias); absent for CLIP)
    files:       name -> {sha256, size}          (filled by bundle.publish)
    sources:     pinned origins of the weights, with the sha256 actually seen
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from models.registry import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, OpenClipModel, Variant

CLIP_WEIGHTS = "open_clip_model.safetensors"
CLIP_VISUAL_WEIGHTS = "open_clip_visual.safetensors"  # image-only variants: no unused text tower on disk
MCLIP_WEIGHTS = "mclip_text.safetensors"


# open_clip's PreprocessCfg defaults: what create_model_and_transforms uses where a tag says nothing.
DEFAULT_PREPROCESS: dict[str, Any] = {"mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD,
                                      "interpolation": "bicubic", "resize_mode": "shortest"}
QUICKGELU_SUFFIX = "-quickgelu"


class PretrainedConflict(ValueError):
    """The registry entry states a value that open_clip's pretrained cfg for its (arch, tag) contradicts."""


def pretrained_cfg_for(clip: OpenClipModel) -> tuple[str | None, dict[str, Any]]:
    """open_clip's pretrained cfg for the entry's tag and the architecture name it is listed under,
    or (None, {}) where open_clip does not know the tag.

    `X-quickgelu` + a tag open_clip lists only under `X` (e.g. `ViT-B-32-quickgelu` + `laion2b_s34b_b79k`)
    is the same weights: that entry is looked up under `X`, so its QuickGELU claim gets checked.
    """
    import open_clip

    names = [clip.arch]
    if clip.arch.endswith(QUICKGELU_SUFFIX):
        names.append(clip.arch[:-len(QUICKGELU_SUFFIX)])
    for name in names:
        cfg = open_clip.get_pretrained_cfg(name, clip.pretrained_tag)
        if cfg:
            return name, dict(cfg)
    return None, {}


def tag_quick_gelu(clip: OpenClipModel) -> bool | None:
    """Whether the tag's weights were trained with QuickGELU, per open_clip; None if it does not know the tag.

    A tag's cfg says `quick_gelu: True` where it needs it on top of the architecture it is listed
    under; where it says nothing, that architecture's own config decides (`roberta-ViT-B-32`'s does).
    """
    import open_clip

    listed_under, cfg = pretrained_cfg_for(clip)
    if listed_under is None:
        return None
    listed_config = open_clip.get_model_config(listed_under) or {}
    return bool(cfg.get("quick_gelu") or listed_config.get("quick_gelu", False))


def clip_config_for(clip: OpenClipModel) -> dict[str, Any]:
    """open_clip's model config for `clip.arch`, with `quick_gelu` as the tag's weights need it.

    So a bundle builds the model those weights were trained as: `create_model(arch, pretrained=<file>)`
    checks nothing (open_clip issue 441), and with `pretrained=<tag>` open_clip only warns.
    An architecture that says QuickGELU for weights trained without it is refused.
    """
    import open_clip

    config = open_clip.get_model_config(clip.arch)
    if config is None:
        raise ValueError(f"open_clip has no architecture {clip.arch!r}; known: {', '.join(open_clip.list_models())}")
    needs = tag_quick_gelu(clip)
    if needs is None:
        return config
    has = bool(config.get("quick_gelu", False))
    if needs and not has:
        config["quick_gelu"] = True
    elif has and not needs:
        listed_under, _ = pretrained_cfg_for(clip)
        raise PretrainedConflict(
            f"{clip.arch} ({clip.pretrained_tag}): the architecture uses QuickGELU, but open_clip's pretrained cfg "
            f"for {listed_under!r} + {clip.pretrained_tag!r} says these weights were trained with plain GELU; "
            f"register the architecture {listed_under!r}")
    return config


def check_quick_gelu(clip: OpenClipModel, clip_config: dict[str, Any]) -> None:
    """Refuse a model config whose activation is not the one open_clip says the tag's weights need."""
    needs = tag_quick_gelu(clip)
    has = bool(clip_config.get("quick_gelu", False))
    if needs is not None and needs != has:
        raise PretrainedConflict(
            f"{clip.arch} ({clip.pretrained_tag}): model config has quick_gelu={has}, but open_clip's pretrained "
            f"cfg for this tag needs quick_gelu={needs} (build the config with models.manifest.clip_config_for)")


def preprocess_for(clip: OpenClipModel, image_size: int) -> dict[str, Any]:
    """The manifest's `preprocess`: open_clip's pretrained cfg for the tag, as
    `create_model_and_transforms(arch, pretrained=tag)` would use it; for a tag open_clip does not
    know, the registry's values, then open_clip's defaults. A registry value that differs from
    open_clip's for a known tag is refused rather than one of them picked."""
    listed_under, tag_cfg = pretrained_cfg_for(clip)
    result: dict[str, Any] = {"image_size": image_size}
    conflicts = []
    for key, default in DEFAULT_PREPROCESS.items():
        stated, known = getattr(clip, key), tag_cfg.get(key)
        if stated is not None and known is not None and _same(stated) != _same(known):
            conflicts.append(f"{key}: registry {_same(stated)!r}, open_clip {_same(known)!r}")
        value = next(v for v in (known, stated, default) if v is not None)
        result[key] = [float(x) for x in value] if key in ("mean", "std") else value
    if conflicts:
        raise PretrainedConflict(
            f"{clip.arch} ({clip.pretrained_tag}): the registry's preprocessing differs from open_clip's pretrained "
            f"cfg for {listed_under!r} + {clip.pretrained_tag!r} ({'; '.join(conflicts)}). Leave these fields "
            f"unset in models/registry.py to use open_clip's values.")
    return result


def _same(value: Any) -> Any:
    """Comparable form: sequences of numbers as tuples of floats."""
    return tuple(float(x) for x in value) if isinstance(value, (list, tuple)) else value


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


def add_bf16_copies(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write a bf16 copy of each weights file beside it and name it in the manifest (`weights_bf16`).

    Why at bake time: a bf16 service (PRECISION=auto on a bf16 CPU) then maps half the bytes and converts
    nothing at start: on a cold container it reads 1.35 GB instead of 2.7 GB for multilingual, and its peak
    RSS stays at the bf16 weights instead of both copies (4.4 GB measured when converting at load).
    The copies hold exactly `tensor.to(torch.bfloat16)` of the fp32 file, so both paths give the same vectors.
    """
    from safetensors.torch import load_file

    manifest = dict(manifest)
    for section in ("clip", "text"):
        name = manifest[section].get("weights")
        if not name:
            continue
        bf16_name = name.removesuffix(".safetensors") + ".bf16.safetensors"
        state = load_file(str(staging / name))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
                  str(staging / bf16_name))
        manifest[section] = dict(manifest[section], weights_bf16=bf16_name)
    return manifest


def build_manifest(variant: Variant, clip_config: dict[str, Any], *, origin: str,
                   sources: list[dict[str, Any]], mclip: dict[str, Any] | None = None,
                   hf_tokenizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest for `variant` (without `files`, which `bundle.publish` fills from disk).

    `mclip` (multilingual only): {config, base_config, tokenizer_class}. `hf_tokenizer` (variants with
    `tokenizer_files`): what `hf_tokenizer_section` made of the staged tokenizer. `clip_config` must have
    the activation open_clip says the tag needs (`clip_config_for` gives it); preprocessing comes
    from `preprocess_for`.
    """
    clip = variant.clip
    check_quick_gelu(clip, clip_config)
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
        "preprocess": preprocess_for(clip, image_size),
        "logit_scale": {"file": clip_weights_name(variant), "key": "logit_scale", "stored_as": "log"},
        "sources": sources,
        "license": variant.license,
    }
    if clip_config.get("init_logit_bias") is not None:  # a SigLIP model: its checkpoint holds the trained bias
        manifest["logit_bias"] = {"file": clip_weights_name(variant), "key": "logit_bias"}
    if bool(variant.tokenizer_files) != (hf_tokenizer is not None):
        raise ValueError(f"variant {variant.name!r}: pass hf_tokenizer= exactly when the variant has tokenizer_files")
    if variant.text is None:
        manifest["architecture"] = clip.arch
        manifest["context_length"] = clip_config["text_cfg"].get("context_length", 77)
        manifest["text"] = {"type": "open_clip", "name": clip_name,
                            "tokenizer_kwargs": clip_config["text_cfg"].get("tokenizer_kwargs", {})}
        if hf_tokenizer is not None:
            manifest["text"]["hf_tokenizer"] = hf_tokenizer
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


# Texts whose token ids bake records with the reference tokenizer and the loader reproduces (models.hf_tokenizer):
# a tokenizer file that loads but tokenizes differently (another tokenizers or transformers release reading it
# another way) stops the load instead of giving other vectors. Cased, punctuated, multilingual, and one over 64.
GOLDEN_TEXTS = ("a photo of a cat", "Zwei Hunde spielen im Schnee!", "一只猫坐在窗台上", "ÉTÉ à Paris - 3 people & 2 dogs",
                "the quick brown fox jumps over the lazy dog " * 12)


def hf_tokenizer_section(staging: Path, clip_config: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `text.hf_tokenizer` for the tokenizer files staged beside the weights.

    Taken from open_clip's own `HFTokenizer` (transformers' AutoTokenizer on the staged files), the reference the
    service must equal: the special tokens it puts before and after a text, its pad id, and its ids for
    GOLDEN_TEXTS (padded to the context, as open_clip returns them).
    """
    from open_clip.tokenizer import HFTokenizer

    text_cfg = clip_config["text_cfg"]
    context = int(text_cfg.get("context_length", 64))
    clean = text_cfg.get("tokenizer_kwargs", {}).get("clean", "whitespace")
    reference = HFTokenizer(str(staging), context_length=context, clean=clean)
    hf = reference.tokenizer
    if hf.truncation_side != "right" or hf.padding_side != "right" or hf.pad_token_id is None:
        raise ValueError(f"{staging}: the tokenizer truncates on the {hf.truncation_side}, pads on the "
                         f"{hf.padding_side} with pad id {hf.pad_token_id}: only right-side cuts and padding with a "
                         "pad token are supported")
    content = hf("a", add_special_tokens=False)["input_ids"]
    full = hf("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(content)] == content)
    golden = [{"text": t, "ids": reference([t])[0].tolist()} for t in GOLDEN_TEXTS]
    return {"file": "tokenizer.json", "clean": clean, "head": full[:start], "tail": full[start + len(content):],
            "pad_id": int(hf.pad_token_id), "golden": golden}
