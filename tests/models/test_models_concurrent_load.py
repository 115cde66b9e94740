"""Loads at the same time in one process (an engine loading in the background while a batch job or a test loads
in the foreground) each get the whole model, and leave nothing patched behind for the next load."""

from __future__ import annotations

import threading

import numpy as np
from torch import nn

from models.loader import load_encoder


def test_concurrent_loads_all_succeed_and_agree(tiny_model_dir):
    original = nn.Module.register_parameter
    results: list[object] = []

    def load() -> None:
        try:
            encoder = load_encoder("english", tiny_model_dir, threads=1, precision="fp32", runtime="torch")
            results.append(encoder.encode_text(["a photo of a cat"]).embeddings)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert nn.Module.register_parameter is original  # nothing left patched
