"""open_clip's BPE tokenizer without importing torch (the ONNX runtime's text side).

`open_clip.tokenizer` imports torch at its top only to return tensors from `__call__`; `SimpleTokenizer
.encode` never touches it. Loading that one file by path with a placeholder standing in for torch during
its import gives open_clip's own tokenizer, unchanged, for ~2 s and ~450 MB less than importing torch.
If torch is already imported the real module is used.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_module: Any = None


def tokenizer_module() -> Any:
    global _module
    with _lock:
        if _module is None:
            _module = _load()
        return _module


def _load() -> Any:
    if "torch" in sys.modules:
        import open_clip.tokenizer

        return open_clip.tokenizer
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    file_spec = importlib.util.spec_from_file_location("clipserve_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(file_spec)
    placeholder = types.ModuleType("torch")  # never called: encode() does not use torch
    placeholder.__getattr__ = lambda name: object  # type: ignore[attr-defined]  # for annotations (PEP 562)
    sys.modules["torch"] = placeholder
    try:
        file_spec.loader.exec_module(module)
    finally:
        if sys.modules.get("torch") is placeholder:
            del sys.modules["torch"]
    return module


def simple_tokenizer(context_length: int, **kwargs: Any) -> Any:
    return tokenizer_module().SimpleTokenizer(context_length=context_length, **kwargs)
