"""Build modules without random initialisation and fill them from a safetensors mmap.

A plain build spends most of its load time initialising random weights that the checkpoint
then overwrites (1.5 s for B-32, 3.3 s for B-16+, ~8 s for XLM-R large on 2 cores). Here
parameters are created on the `meta` device (no memory, init is a no-op) while buffers stay
real: non-persistent buffers (open_clip's causal `attn_mask`, XLM-R's `position_ids` /
`token_type_ids`) are not in checkpoints, and building them for real keeps them correct
without knowing each architecture. This is accelerate's `init_empty_weights(include_buffers=False)`,
in a dozen lines rather than one more runtime dependency.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


# torch.nn.init's initializers. On a meta tensor they would be no-ops that still cost: torch runs them
# through its Python reference ops, whose first use imports torch._dynamo (about 2 s of a cold start).
_INITIALIZERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                 "sparse_")


_PATCHING = threading.RLock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active, every `nn.Parameter` registered on a module is moved to `meta`, and
    torch.nn.init's initializers skip meta tensors.

    It patches `nn.Module.register_parameter` and `torch.nn.init` process-wide, so loads are serialized by a
    lock: two at once in one process (an engine loading in the background while a batch job or a test loads
    in the foreground) used to nest the patches, and the outer restore left a patched `register_parameter`
    behind, so that every later load in the process failed with "the checkpoint lacks ...".
    """
    with _PATCHING:
        yield from _on_meta()


def _on_meta() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            kwargs = dict(param.__dict__)
            kwargs["requires_grad"] = param.requires_grad
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    initializers = {name: getattr(nn.init, name) for name in _INITIALIZERS if hasattr(nn.init, name)}
    nn.Module.register_parameter = register_on_meta
    for name, init in initializers.items():
        setattr(nn.init, name, _skipping_meta(init))
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for name, init in initializers.items():
            setattr(nn.init, name, init)


def _skipping_meta(init):  # noqa: ANN001, ANN202 - wraps any torch.nn.init function
    def run(tensor: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return tensor if tensor.is_meta else init(tensor, *args, **kwargs)

    return run


def load_safetensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors backed by a private mmap of the file: pages are read on first touch, not copied up front."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def meta_tensors(module: nn.Module, prefixes: Iterable[str] = ("",)) -> list[str]:
    """Names of parameters/buffers still on `meta` under any of `prefixes`."""
    prefixes = tuple(prefixes)
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in named if t.is_meta and name.startswith(prefixes)]


def assign_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], *, required: Iterable[str] = ("",),
                   what: str = "weights") -> None:
    """Load `state_dict` into a meta-built `module` by assignment (no copy), then prove it is complete.

    `required`: key prefixes that must all be loaded (e.g. only `visual.` for an image-only
    checkpoint). Unexpected keys, or anything under `required` left on `meta`, raise ValueError
    naming the keys: a wrong architecture config must fail here, not produce garbage vectors.
    """
    result = module.load_state_dict(state_dict, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"{what}: keys the architecture does not have: {_names(result.unexpected_keys)}")
    missing = meta_tensors(module, required)
    if missing:
        raise ValueError(f"{what}: the checkpoint lacks {_names(missing)}")
    module.requires_grad_(False)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
