"""Batching engine: one inference thread, a bounded queue, a Future per item. No flask, no torch."""

from engine.batcher import Batcher, BatchFailed, EngineStopped, LoopHealth, Overloaded
from engine.service import (ClientGone, EmbeddingEngine, ModelState, NotReady, RequestTimedOut, TextResult,
                            TextsTooLong)

__all__ = ["Batcher", "BatchFailed", "EngineStopped", "LoopHealth", "Overloaded", "EmbeddingEngine",
           "ModelState", "NotReady", "RequestTimedOut", "TextResult", "ClientGone", "TextsTooLong"]
