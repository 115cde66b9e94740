"""OpenCLIP towers built from a manifest's architecture config (never from open_clip's registry).

The image side is open_clip's own `image_transform` + `encode_image`; the text side is
open_clip's tokenizer and text transformer, run only up to the longest EOT in the batch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models import lean_imports
from models.encoder import PreparedText
from models.truncation import first_tokens
from models.weights import assign_weights, load_safetensors, parameters_on_meta

VISUAL_PREFIX = "visual."


def model_class_for(config: dict[str, Any]) -> type[nn.Module]:
    """The open_clip class open_clip's `create_model` would pick for this config."""
    lean_imports.import_open_clip(config)
    from open_clip.model import CLIP, CustomTextCLIP

    custom_text = config.get("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    if not custom_text:
        return CLIP
    if "multimodal_cfg" in config:
        from open_clip.coca_model import CoCa

        return CoCa
    return CustomTextCLIP


def model_class_and_kwargs(config: dict[str, Any]) -> tuple[type[nn.Module], dict[str, Any]]:
    """The open_clip class for ``config`` and the keyword arguments that build it offline: a timm image tower never
    fetches weights, and a tiny one (models.tiny_timm) is registered with timm first."""
    cfg = copy.deepcopy(config)
    cls = model_class_for(cfg)
    cfg.pop("custom_text", None)
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        from models.tiny_timm import ensure_registered

        ensure_registered(cfg["vision_cfg"]["timm_model_name"])
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # never fetch timm weights
    return cls, cfg


def build_model(config: dict[str, Any]) -> nn.Module:
    """An open_clip model with parameters on `meta` and real buffers (see models.weights)."""
    if "hf_model_name" in config.get("text_cfg", {}):
        raise NotImplementedError("open_clip configs with a Hugging Face text model need that model's config "
                                  "baked into the bundle; not supported yet")
    cls, kwargs = model_class_and_kwargs(config)
    with parameters_on_meta():
        model = cls(**kwargs)
    return model.eval()


def load_model(config: dict[str, Any], weights: Path, *, with_text: bool) -> nn.Module:
    """Build on meta and assign the safetensors weights. `with_text=False`: only the image tower
    (and logit_scale) must be present in the file; the text tower stays on `meta`, unused."""
    model = build_model(config)
    required = ("",) if with_text else (VISUAL_PREFIX, "logit_scale")
    assign_weights(model, load_safetensors(weights), required=required, what=str(weights))
    return model


class OpenClipImageTower:
    """open_clip preprocessing (from the manifest) + `encode_image`, in the dtype of the model's weights."""

    def __init__(self, model: nn.Module, preprocess: dict[str, Any], device_jpeg: Any = None):
        from open_clip.transform import image_transform

        self.model = model
        first = next(model.visual.parameters())
        self.dtype, self.device = first.dtype, first.device  # bf16 when the loader converted the weights
        self.image_size = int(preprocess["image_size"])
        self.device_jpeg = device_jpeg  # a models.device_jpeg.DeviceJpeg when JPEGs are decoded on the GPU
        self.transform = image_transform(
            self.image_size, is_train=False, mean=tuple(preprocess["mean"]), std=tuple(preprocess["std"]),
            resize_mode=preprocess["resize_mode"], interpolation=preprocess["interpolation"])

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) float32. Pure function of its input; safe from many threads."""
        with torch.inference_mode():
            return self.transform(image)

    def encode(self, batch: list[torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return _to_numpy(self.model.encode_image(_stack_on(batch, self.device, self.dtype), normalize=False))


class OpenClipTextTower:
    """open_clip BPE tokenizer + text transformer, trimmed to the batch's longest EOT."""

    def __init__(self, model: nn.Module, context_length: int, tokenizer_kwargs: dict[str, Any] | None = None):
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model
        self.context_length = context_length
        self.tokenizer = SimpleTokenizer(context_length=context_length, **(tokenizer_kwargs or {}))
        run_sequence_first(model.transformer)

    def prepare(self, text: str) -> PreparedText:
        """Token ids as open_clip's tokenizer makes them: SOT, the text, EOT; a text that does not fit
        is cut so that its last kept token is EOT. Only a bounded prefix of a long text is tokenized."""
        tok = self.tokenizer
        if tok.reduction_fn is not None:  # non-default strategies (no shipped variant): open_clip's own code
            row = tok([text])[0].tolist()
            kept = len(row) - next((i for i, t in enumerate(reversed(row)) if t != 0), len(row))
            return PreparedText(tuple(row[:kept]), len(tok.encode(text)) + 2 > self.context_length)
        content, truncated = first_tokens(tok.encode, text, self.context_length - 2)
        return PreparedText((tok.sot_token_id, *content, tok.eot_token_id), truncated)

    def tokens(self, items: list[PreparedText]) -> torch.Tensor:
        """(n, context_length) zero-padded, as open_clip's tokenizer returns them."""
        result = torch.zeros(len(items), self.context_length, dtype=torch.long)
        for i, item in enumerate(items):
            result[i, :len(item.ids)] = torch.tensor(item.ids)
        return result

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        device = self.model.token_embedding.weight.device
        with torch.inference_mode():
            return _to_numpy(encode_text_trimmed(self.model, _on(self.tokens(items), device)))


class HfTokenizerTextTower:
    """open_clip's text transformer with a Hugging Face tokenizer (SigLIP): no causal mask, the last position pools,
    so every one of the context's positions runs, padding included (nothing to trim)."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer  # a models.hf_tokenizer.BundleTokenizer

    def prepare(self, text: str) -> PreparedText:
        return self.tokenizer.prepare(text)

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        device = next(self.model.text.parameters()).device
        with torch.inference_mode():
            return _to_numpy(self.model.encode_text(_on(torch.from_numpy(self.tokenizer.rows(items)), device)))


def _on(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A batch on the towers' device: on a GPU through pinned memory, copied without blocking."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor if dtype is None else tensor.to(dtype)


def _stack_on(batch: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Model inputs made on the CPU (Pillow) and on the device (its JPEG decoder), as one batch there."""
    on_cpu = [t for t in batch if t.device.type == "cpu"]
    if len(on_cpu) in (0, len(batch)):
        return _on(torch.stack(batch), device, dtype)
    moved = iter(_on(torch.stack(on_cpu), device))  # the CPU ones in one copy
    return torch.stack([next(moved) if t.device.type == "cpu" else t for t in batch]).to(dtype)


def _to_numpy(features: torch.Tensor) -> np.ndarray:
    """float32 on the CPU: one copy back per batch."""
    return features.float().cpu().numpy()


def run_sequence_first(transformer: nn.Module) -> None:
    """Run the text transformer's blocks on (L, N, D) tensors instead of (N, L, D); same operations and results.

    The causal mask is a float mask, which keeps nn.MultiheadAttention off its fused fast path; on the
    slow path a batch-first block hands its projections a transposed view, and torch's matmul then
    copies the weight once per position (measured: bf16 text slower than fp32). Sequence-first, every
    block after the first gets contiguous input: 3.3x the bf16 text throughput at batch 16 and 1.3x in
    fp32 on the dev VM, with outputs equal to the batch-first pass. open_clip's Transformer supports
    this layout (``batch_first=False``); blocks that do not (custom blocks) are left as they are.
    """
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(getattr(transformer, "resblocks", []))
    if not blocks or not all(type(b) is ResidualAttentionBlock and isinstance(b.attn, nn.MultiheadAttention)
                             for b in blocks):
        return
    transformer.batch_first = False
    for block in blocks:
        block.attn.batch_first = False


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, computing only positions up to the longest EOT in the batch.

    The text transformer is causal and pools at the EOT, so later positions cannot change any
    output. Falls back to the full pass where that does not hold (other pooling, no causal mask,
    or a text tower other than open_clip's built-in one).
    """
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    pool_type = getattr(model, "text_pool_type", None)
    if type(model) is not CLIP or pool_type not in ("argmax", "eos") or model.attn_mask is None:
        return model.encode_text(tokens)
    if pool_type == "argmax":  # EOT is the largest token id
        eot_positions = tokens.argmax(dim=-1)
    else:
        eot_positions = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(eot_positions.max()) + 1
    tokens = tokens[:, :length]

    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=model.text_eos_id)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return x
