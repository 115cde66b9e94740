"""Import only the parts of open_clip (and torchvision) that serving a bundle uses.

Why: on a scale-to-zero platform the cold start is part of the product, and most of it was
imports. ``import open_clip`` runs the package ``__init__``, which imports every model family,
the training losses, the hub uploader, and the optional timm and transformers; timm and
torchvision's ``__init__`` (its detection ops) import ``torch._dynamo``. Measured on the 2-core dev
VM: 3.4 s for ``open_clip`` on top of 1.6 s for torch, against 0.2 s for the modules a ViT CLIP
needs (``model``, ``transformer``, ``transform``, ``tokenizer``).

How: ``open_clip``, ``torchvision`` and ``torchvision.ops`` are registered without running their
``__init__`` (their submodules import as usual), and timm / transformers, which open_clip treats
as optional (``try: import ... except ImportError``), are hidden while its model module is first
imported, unless the bundle's architecture needs them.

Nothing is lost for other code in the process: the first access to an attribute that a skipped
``__init__`` would have defined runs that ``__init__`` then (a PEP 562 module ``__getattr__``), so
``open_clip.create_model_and_transforms`` or ``torchvision.ops.nms`` still work, just later.
The one lasting effect: open_clip's own timm/HF towers stay unavailable in a process where they
were hidden, which is why they are hidden only when the bundle does not need them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

# Parents first: registering "torchvision.ops" needs "torchvision" in sys.modules.
DEFERRED_PACKAGES = ("torchvision", "torchvision.ops", "open_clip")
OPEN_CLIP_MODULES = ("open_clip.model", "open_clip.transformer", "open_clip.transform", "open_clip.tokenizer")
_lock = threading.RLock()


def import_open_clip(config: dict[str, Any]) -> None:
    """Import the open_clip modules that build and run ``config`` (an open_clip model config), lazily."""
    with _lock:
        if all(name in sys.modules for name in OPEN_CLIP_MODULES):
            return
        for name in DEFERRED_PACKAGES:
            if name not in sys.modules:
                defer_init(name)
        optional = {"timm": "timm_model_name" in config.get("vision_cfg", {}),
                    "transformers": "hf_model_name" in config.get("text_cfg", {})}
        with hidden([name for name, needed in optional.items() if not needed]):
            for name in OPEN_CLIP_MODULES:
                importlib.import_module(name)


def defer_init(name: str) -> ModuleType:
    """Put package ``name`` in sys.modules with its ``__init__`` not run until an attribute needs it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an importable package")
    module = importlib.util.module_from_spec(spec)

    def complete_on_demand(attribute: str) -> Any:
        run_init(module)
        if attribute in module.__dict__:
            return module.__dict__[attribute]
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    module.__getattr__ = complete_on_demand  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def run_init(module: ModuleType) -> None:
    """Run a deferred package's ``__init__`` in place (once); its submodules already imported are reused."""
    with _lock:
        if module.__dict__.pop("__getattr__", None) is None:
            return  # already run
        module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]


@contextlib.contextmanager
def hidden(names: list[str]) -> Iterator[None]:
    """While active, ``import name`` raises ImportError for these not-yet-imported modules."""
    names = [n for n in names if n not in sys.modules]
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in names:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
