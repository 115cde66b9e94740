"""Tiny timm image towers for random-weight bundles (tests, `serve.sh --demo`) of timm-based variants (SigLIP).

open_clip 3.3.0 builds a timm tower by name and passes no size arguments to timm, so a shrunk config cannot shrink
it. A tiny bundle's config names `clipserve_tiny_<real timm name>` instead: the real model's own entrypoint (same
patch size, pooling, activation, image size) at width 32 and depth 2, registered with timm here on first use, by
the tiny-bundle writer and by the loader alike, so a tiny bundle loads in any process.
"""

from __future__ import annotations

import threading

PREFIX = "clipserve_tiny_"
WIDTH, DEPTH, HEADS = 32, 2, 2
_lock = threading.Lock()


def tiny_name(real: str) -> str:
    return PREFIX + real


def ensure_registered(name: str) -> None:
    """Register `name` with timm if it is a tiny tower's name and not registered yet; other names pass."""
    if not name.startswith(PREFIX):
        return
    import timm
    from timm.models import model_entrypoint, register_model

    real = name[len(PREFIX):]
    with _lock:
        if timm.is_model(name):
            return
        entrypoint = model_entrypoint(real)  # KeyError for a name timm does not know

        def build(pretrained: bool = False, **kwargs):  # noqa: ANN202, ANN003 - timm's entrypoint signature
            kwargs = {"embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": 2.0, **kwargs}
            return entrypoint(pretrained=False, **kwargs)

        build.__name__ = name
        build.__module__ = __name__
        register_model(build)
