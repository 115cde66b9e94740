"""M-CLIP text tower (XLM-R + mean pooling + linear), loaded the way that works offline on transformers 5.

`multilingual_clip.MultilingualCLIP.from_pretrained` fetches the whole base model from the hub
inside its `__init__` (and fails on transformers 5), and its `forward` tokenizes without
truncation, so texts over 512 tokens crash it. Here the same computation is built from the
bundle: XLM-R from the baked base config, weights assigned from safetensors, truncation on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.encoder import PreparedText
from models.truncation import first_tokens
from models.weights import assign_weights, load_safetensors, parameters_on_meta

# Keys in M-CLIP's checkpoint that the module deliberately lacks: the pooler is unused (mean
# pooling instead) and position_ids is a non-persistent buffer in current transformers.
IGNORED_KEY_PREFIXES = ("transformer.pooler.", "transformer.embeddings.position_ids")


def mclip_dims(mclip_config: dict[str, Any]) -> tuple[int, int]:
    """(XLM-R width, output dim). M-CLIP's config class reads both its constructor names
    (`transformerDimSize`, `imageDimSize`) and the saved names (`transformerDimensions`, `numDims`)."""
    from multilingual_clip.Config_MCLIP import MCLIPConfig

    config = MCLIPConfig(**mclip_config)
    return int(config.transformerDimensions), int(config.numDims)


class MClipTextModel(nn.Module):
    """Attribute names match M-CLIP's checkpoint keys (`transformer.*`, `LinearTransformation.*`)."""

    def __init__(self, base_config: dict[str, Any], mclip_config: dict[str, Any]):
        super().__init__()
        import transformers

        width, dim = mclip_dims(mclip_config)
        base = transformers.AutoConfig.for_model(**base_config)
        self.transformer = transformers.AutoModel.from_config(base, add_pooling_layer=False)
        self.LinearTransformation = nn.Linear(width, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Same operations, in the same order, as MultilingualCLIP.forward.
        embs = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        att = attention_mask
        embs = (embs * att.unsqueeze(2)).sum(dim=1) / att.sum(dim=1)[:, None]
        return self.LinearTransformation(embs)


def load_model(base_config: dict[str, Any], mclip_config: dict[str, Any], weights: Path) -> MClipTextModel:
    with parameters_on_meta():
        model = MClipTextModel(base_config, mclip_config)
    state = {k: v for k, v in load_safetensors(weights).items() if not k.startswith(IGNORED_KEY_PREFIXES)}
    assign_weights(model, state, what=str(weights))
    return model.eval()


def load_tokenizer(bundle_dir: Path, spec: dict[str, Any]):
    """The tokenizer class named in the manifest, from the bundle's files only."""
    import transformers

    cls = getattr(transformers, spec["class"])
    return cls.from_pretrained(str(bundle_dir), local_files_only=True)


class MClipTextTower:
    """XLM-R tokenizer + M-CLIP model. Tokenizing with truncation on (upstream crashes past 512 tokens).

    The fast tokenizer's Rust backend is not safe to call from several threads at once when calls
    change its truncation/padding settings ("Already borrowed"), so every tokenizer call holds a lock.
    """

    def __init__(self, model: MClipTextModel, tokenizer, max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()
        self._head, self._tail = special_tokens_around(tokenizer)

    def prepare(self, text: str) -> PreparedText:
        """The ids of ``tokenizer(text, truncation=True, max_length=...)``, tokenizing a bounded prefix only."""
        keep = self.max_length - len(self._head) - len(self._tail)
        with self._lock:
            content, truncated = first_tokens(self._content_ids, text, keep)
        return PreparedText((*self._head, *content, *self._tail), truncated)

    def _content_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        """The same padded batch as `tokenizer(texts, padding=True, truncation=True, max_length=...)`."""
        with self._lock:
            batch = self.tokenizer.pad({"input_ids": [list(item.ids) for item in items]}, padding=True,
                                       return_tensors="pt")
        device = self.model.LinearTransformation.weight.device
        with torch.inference_mode():
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            return self.model(ids, mask).float().cpu().numpy()


def special_tokens_around(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the tokenizer puts before and after a single text (XLM-R: <s> and </s>), read off a probe."""
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(content) + 1):
        if full[start:start + len(content)] == content:
            return tuple(full[:start]), tuple(full[start + len(content):])
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell its special tokens from the text's")


def load_tower(bundle_dir: Path, section: dict[str, Any]) -> MClipTextTower:
    model = load_model(section["base_config"], section["config"], bundle_dir / section["weights"])
    tokenizer = load_tokenizer(bundle_dir, section["tokenizer"])
    return MClipTextTower(model, tokenizer, int(section["max_length"]))
