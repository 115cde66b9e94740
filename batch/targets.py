"""What the job runner talks to: the HTTP service (batch.http_target) or the model in this
process (batch.local_target). Both turn a batch of rows into one result per row, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from batch.reader import Row
from batch.results import EmbedResult, RowError, ScoreResult


class FatalTargetError(RuntimeError):
    """The job cannot go on (bad credentials, wrong URL, service down after every retry).
    Rows not yet written stay unwritten, so re-running the same command picks them up."""


class Target(Protocol):
    def describe(self) -> dict[str, Any]:
        """The model behind the target (variant, architecture, dim), for the summary."""
        ...

    def embed(self, rows: Sequence[Row], normalize: bool = True) -> list[EmbedResult]: ...

    def score(self, rows: Sequence[Row]) -> list[ScoreResult]:
        """`rows[i].image` against `rows[i].text`."""
        ...

    def close(self) -> None: ...


MISSING_EMBED_INPUT = RowError("missing_input", "the row has neither a text nor an image")


def missing_score_input(row: Row) -> RowError | None:
    """A score row needs both sides."""
    missing = [name for name, value in (("text", row.text), ("image", row.image)) if value is None]
    if missing:
        return RowError("missing_input", f"the row has no {' and no '.join(missing)}")
    return None
