"""Towers on ONNX Runtime, behind the same `TextTower` / `ImageTower` contract as the torch ones.

Nothing here imports torch: images are preprocessed in numpy + PIL (`models.preprocess`, identical to
open_clip's transform), open_clip's own BPE tokenizer is loaded without it (`models.clip_tokenizer`),
M-CLIP's tokenizer is the `tokenizers` library on the bundle's tokenizer.json (what transformers' fast
tokenizer wraps). That keeps torch's ~2 s import and ~450 MB out of an ONNX service's cold start.

One session per tower, run from the engine's single inference thread; ONNX Runtime's intra-op pool is
sized to the CPUs the container really has (`models.threads.cpu_budget`), like torch's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.encoder import PreparedText
from models.truncation import first_tokens


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spin while a call runs (each op's threads start at once), sleep as soon as it returns: spinning between calls
    # took a core from the request threads on a 2-vCPU instance (bench/RESULTS.md, "The text path").
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxImageTower:
    def __init__(self, graph: Any, preprocess: dict[str, Any]) -> None:
        from models.preprocess import transform_for

        self.session = graph
        self.transform = transform_for(preprocess)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) float32, the same array open_clip's transform gives."""
        return self.transform(image)

    def encode(self, batch: list[np.ndarray]) -> np.ndarray:
        return self.session.run(None, {"pixels": np.stack(batch)})[0]


class OnnxClipTextTower:
    """open_clip's tokenizer + the exported text graph, on ids cut after the batch's longest EOT."""

    def __init__(self, graph: Any, context_length: int, tokenizer_kwargs: dict[str, Any] | None = None) -> None:
        from models.clip_tokenizer import simple_tokenizer

        self.session = graph
        self.context_length = context_length
        self.tokenizer = simple_tokenizer(context_length, **(tokenizer_kwargs or {}))
        if self.tokenizer.reduction_fn is not None:
            raise ValueError("the ONNX text tower covers open_clip's default tokenizer strategy only")

    def prepare(self, text: str) -> PreparedText:
        tok = self.tokenizer
        content, truncated = first_tokens(tok.encode, text, self.context_length - 2)
        return PreparedText((tok.sot_token_id, *content, tok.eot_token_id), truncated)

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        length = max(len(item.ids) for item in items)  # each ends in EOT: the longest EOT + 1
        tokens = np.zeros((len(items), length), dtype=np.int64)
        for i, item in enumerate(items):
            tokens[i, :len(item.ids)] = item.ids
        return self.session.run(None, {"tokens": tokens})[0]


class OnnxHfTextTower:
    """A Hugging Face tokenizer (models.hf_tokenizer, no torch) + the exported text graph on the full context (SigLIP:
    no causal mask, the last position pools)."""

    def __init__(self, graph: Any, tokenizer: Any) -> None:
        self.session = graph
        self.tokenizer = tokenizer

    def prepare(self, text: str) -> PreparedText:
        return self.tokenizer.prepare(text)

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        return self.session.run(None, {"tokens": self.tokenizer.rows(items)})[0]


class OnnxMClipTextTower:
    """XLM-R tokenizer (tokenizers, from tokenizer.json) + the exported M-CLIP graph (mean pooling inside)."""

    def __init__(self, graph: Any, bundle_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.session = graph
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_id = self._pad_id(bundle_dir)
        content = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a").ids
        start = next(i for i in range(len(full)) if full[i:i + len(content)] == content)
        self._head, self._tail = tuple(full[:start]), tuple(full[start + len(content):])

    def _pad_id(self, bundle_dir: Path) -> int:
        config = json.loads((bundle_dir / "tokenizer_config.json").read_text())
        pad = config.get("pad_token", "<pad>")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        found = self.tokenizer.token_to_id(pad)
        if found is None:
            raise ValueError(f"{bundle_dir}/tokenizer.json has no pad token {pad!r}")
        return found

    def prepare(self, text: str) -> PreparedText:
        keep = self.max_length - len(self._head) - len(self._tail)
        content, truncated = first_tokens(lambda t: self.tokenizer.encode(t, add_special_tokens=False).ids, text, keep)
        return PreparedText((*self._head, *content, *self._tail), truncated)

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        length = max(len(item.ids) for item in items)
        ids = np.full((len(items), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), length), dtype=np.int64)
        for i, item in enumerate(items):
            ids[i, :len(item.ids)] = item.ids
            mask[i, :len(item.ids)] = 1
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
