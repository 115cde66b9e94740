"""A Hugging Face tokenizer baked in a bundle (SigLIP's Gemma), giving open_clip's `HFTokenizer` ids without it.

open_clip's `HFTokenizer` loads the tokenizer through transformers (4 s and 850 MB to import here, and from the hub
unless given a folder) and tokenizes a text whole before cutting it to the context. Here the `tokenizers` library
reads the bundle's `tokenizer.json` directly (no torch, no transformers: the ONNX runtime uses it too); the
special tokens around a text and the pad id come from the manifest, where bake wrote what the reference tokenizer
does; only a bounded prefix of a long text is tokenized (`models.truncation`); and the cleaning is open_clip's own
function (`clean='canonicalize'`: lower case, punctuation removed). The ids bake recorded for a few texts are
reproduced at load, so a tokenizer that reads the file differently stops the load instead of changing vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.encoder import PreparedText
from models.truncation import first_tokens


class TokenizerMismatch(ValueError):
    """The bundle's tokenizer does not give the ids bake recorded with the reference tokenizer."""


class BundleTokenizer:
    """Texts -> token ids as open_clip's HFTokenizer makes them: cleaned, special tokens around, cut to the context,
    padded to it with the pad id (the model pools the last position, so padding is part of its input)."""

    def __init__(self, bundle_dir: Path | str, spec: dict[str, Any], context_length: int) -> None:
        from tokenizers import Tokenizer

        from models.clip_tokenizer import tokenizer_module

        self._tokenizer = Tokenizer.from_file(str(Path(bundle_dir) / spec["file"]))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._clean = tokenizer_module().get_clean_fn(spec["clean"])
        self.context_length = context_length
        self.head, self.tail = tuple(spec["head"]), tuple(spec["tail"])
        self.pad_id = int(spec["pad_id"])
        self._check(spec.get("golden", []), bundle_dir)

    def content_ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(self._clean(text), add_special_tokens=False).ids

    def prepare(self, text: str) -> PreparedText:
        """Ids of one text with its special tokens, cut so that they fit the context (never an error)."""
        keep = self.context_length - len(self.head) - len(self.tail)
        content, truncated = first_tokens(self.content_ids, text, keep)
        return PreparedText((*self.head, *content, *self.tail), truncated)

    def rows(self, items: list[PreparedText]) -> np.ndarray:
        """(n, context_length) int64, each row padded on the right with the pad id."""
        tokens = np.full((len(items), self.context_length), self.pad_id, dtype=np.int64)
        for i, item in enumerate(items):
            tokens[i, :len(item.ids)] = item.ids
        return tokens

    def _check(self, golden: list[dict[str, Any]], bundle_dir: Path | str) -> None:
        for case in golden:
            got = self.rows([self.prepare(case["text"])])[0].tolist()
            if got != list(case["ids"]):
                raise TokenizerMismatch(
                    f"{bundle_dir}: the tokenizer gives {got[:12]}... for {case['text'][:40]!r}, bake recorded "
                    f"{list(case['ids'])[:12]}... with open_clip's HFTokenizer: the installed tokenizers library reads "
                    "tokenizer.json differently; re-bake the bundle with this environment")
