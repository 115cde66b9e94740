"""An in-process LRU cache of text embeddings.

Zero-shot scoring sends the same labels and prompts again and again ("a photo of a {label}"), and
a cached text skips tokenization, the queue and the model. Entries are small (a 512-640 float32
vector each), so a few thousand cost a few MB.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

import numpy as np


# Texts longer than this are keyed by their digest: texts may be up to MAX_TEXT_CHARS (a million
# characters), and thousands of them as keys would hold gigabytes.
_LONGEST_KEPT_TEXT = 512


def text_key(text: str, normalize: bool) -> Hashable:
    """The cache key of a text: the text itself when short, else its SHA-256."""
    if len(text) <= _LONGEST_KEPT_TEXT:
        return text, normalize
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), normalize


@dataclass(frozen=True)
class CachedText:
    vector: np.ndarray  # (dim,) float32, read-only
    truncated: bool
    tokens: int


class TextCache:
    """Thread-safe LRU of ``key -> CachedText``; ``capacity`` 0 disables it (every lookup misses)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, CachedText] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> CachedText | None:
        if not self.capacity:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, vector: np.ndarray, truncated: bool, tokens: int) -> None:
        if not self.capacity:
            return
        vector = np.array(vector, dtype=np.float32)  # a copy: callers may reuse their batch array
        vector.setflags(write=False)
        with self._lock:
            self._entries[key] = CachedText(vector, truncated, tokens)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
