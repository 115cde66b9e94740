"""Loading does not waste time on random initialisation that the file then overwrites.

`test_model_loading.test_weights_are_loaded_not_randomly_initialised` shows the values are the
file's, which a plain build + `load_state_dict` also gives. Here every initializer is watched
while `load_encoder` runs: torch.nn.init's functions (which `reset_parameters` and open_clip's
`init_parameters` call), transformers' own saved copies of them, and, underneath both, every
random-number op torch runs. A control shows the same watch catches a plain eager build.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
import transformers.initialization as hf_init
from safetensors import safe_open
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from models.loader import load_encoder
from models.tiny import random_clip, random_mclip_state

VARIANTS = ("english", "multilingual")
INIT_FUNCTIONS = sorted(n for n in vars(torch.nn.init) if n.endswith("_") and not n.startswith("_")
                        and callable(getattr(torch.nn.init, n)))
DETERMINISTIC_INITS = {"zeros_", "ones_", "constant_", "eye_", "dirac_"}  # restoring a buffer, not drawing
# In-place random fills (what every random initializer ends in) and random tensor factories.
RANDOM_FILLS = {"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_",
                "geometric_"}
RANDOM_FACTORIES = {"randn", "rand", "randint", "randperm", "normal", "randn_like", "rand_like", "randint_like"}


@dataclass
class Watch:
    inits: list[tuple[str, tuple[int, ...], bool]] = field(default_factory=list)  # (function, shape, is a Parameter)
    fills: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    drawn: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # random factories' outputs

    def inits_on_parameters(self):
        return [c for c in self.inits if c[2]]

    def random_inits(self):
        return [c for c in self.inits if c[0].split(".")[-1] not in DETERMINISTIC_INITS]


class _RandomOps(TorchDispatchMode):
    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if isinstance(out, torch.Tensor) and not out.is_meta:
            if name in RANDOM_FILLS:
                self.watch.fills.append((name, tuple(out.shape)))
            elif name in RANDOM_FACTORIES:
                self.watch.drawn.append((name, tuple(out.shape)))
        return out


@contextlib.contextmanager
def watching_initialisation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    """Record every initializer call on a real (non-meta) tensor and every random op producing one."""
    watch = Watch()

    def recording(label, fn):
        @functools.wraps(fn)
        def wrapper(tensor, *args, **kwargs):
            if not tensor.is_meta:
                watch.inits.append((label, tuple(tensor.shape), isinstance(tensor, nn.Parameter)))
            return fn(tensor, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        for name in INIT_FUNCTIONS:
            patch.setattr(torch.nn.init, name, recording(name, getattr(torch.nn.init, name)))
        # transformers calls the torch functions it saved at import, not torch.nn.init's attributes
        for name, fn in list(hf_init.TORCH_INIT_FUNCTIONS.items()):
            patch.setitem(hf_init.TORCH_INIT_FUNCTIONS, name, recording(f"transformers.{name}", fn))
        with _RandomOps(watch):
            yield watch


def constructor_draws(weights) -> int:
    """Elements open_clip's VisionTransformer draws with `scale * torch.randn(...)` in its constructor
    (class_embedding, positional_embedding, proj): the tensor exists before it becomes a Parameter,
    so building on meta cannot skip it. Small: 0.3% of ViT-B-32."""
    with safe_open(str(weights), framework="pt") as f:
        names = [k for k in ("visual.class_embedding", "visual.positional_embedding", "visual.proj") if k in f.keys()]
        return sum(_numel(f.get_slice(k).get_shape()) for k in names)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("variant", VARIANTS)
def test_load_runs_no_initializer_on_real_parameters(variant, tiny_model_dir, monkeypatch):
    load_encoder(variant, tiny_model_dir)  # imports done: the watch sees only the load itself
    with watching_initialisation(monkeypatch) as watch:
        encoder = load_encoder(variant, tiny_model_dir)
    assert encoder.encode_text(["a cat"]).embeddings.shape == (1, 32)

    assert watch.inits_on_parameters() == []
    # What is left are buffers being given their deterministic values (XLM-R's token_type_ids).
    assert watch.random_inits() == [], watch.inits
    assert watch.fills == []
    spec = json.loads((tiny_model_dir / variant / "manifest.json").read_text())
    drawn = sum(_numel(shape) for _, shape in watch.drawn)
    assert drawn <= constructor_draws(tiny_model_dir / variant / spec["clip"]["weights"]), watch.drawn


def test_the_watch_catches_a_plain_build(tiny_model_dir, monkeypatch):
    """Control: an eager build (what `create_model(..., pretrained=file)` does first) is caught on
    both code paths, open_clip's and transformers'."""
    english = json.loads((tiny_model_dir / "english/manifest.json").read_text())
    with watching_initialisation(monkeypatch) as watch:
        random_clip(english["clip"]["config"])
    assert watch.inits_on_parameters() and watch.fills
    assert {"normal_"} <= {name for name, _, _ in watch.inits}

    text = json.loads((tiny_model_dir / "multilingual/manifest.json").read_text())["text"]
    with watching_initialisation(monkeypatch) as watch:
        random_mclip_state(text["base_config"], 32)
    assert any(name.startswith("transformers.") and param for name, _, param in watch.inits)
    assert watch.fills


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_bundle_loads_well_under_a_second(variant, tiny_model_dir):
    """Medians measured 0.04-0.17 s on 2 shared cores at load 2.4; 1 s leaves room for a busier machine."""
    load_encoder(variant, tiny_model_dir)  # warm-up: imports, tokenizer files in the page cache
    times = []
    for _ in range(3):
        start = time.perf_counter()
        load_encoder(variant, tiny_model_dir)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1.0, times
