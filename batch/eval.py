"""clipserve-batch eval: which model suits my data? The standard zero-shot and retrieval numbers, per model.

    clipserve-batch eval --zero-shot photos/ --model english --model siglip2-b16 --local --model-dir /models
    clipserve-batch eval --retrieval captions.csv --clip-score prompts.csv --endpoint URL --model fast --model accurate

Three measurements, any of them in one run, each model side by side (a table on stdout, every number in --json):
- zero-shot classification over a folder of labelled images (a sub-folder per label, its name the label): top-1
  and top-5 accuracy and mean per-class recall, the labels embedded through prompt templates (--templates);
- retrieval over a CSV of image + caption (an image may have several captions, one per row): text-to-image and
  image-to-text recall@1/5/10;
- the CLIP score (max(100 * cosine, 0)) of each image + prompt pair of a CSV: its distribution;
and the items (images and texts) embedded per second.

The definitions are CLIP_benchmark's (clip_benchmark/metrics/zeroshot_classification.py and zeroshot_retrieval.py):
a label is the normalized mean of its templates' normalized embeddings; top-k counts an image right when its label
is among the k best-scoring; text-to-image recall@k (CLIP_benchmark's image_retrieval_recall@k) is the share of
captions whose image is among the k images nearest to it, image-to-text recall@k (its text_retrieval_recall@k) the
share of images with at least one of their captions among the k nearest captions.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch import options
from batch.reader import IMAGE_SUFFIXES, Row
from batch.retry import RetryTally
from batch.specs import EvalSpec, TargetSpec
from models.prompts import TEMPLATE_SETS, fill, mean_of_templates, resolve_templates

log = logging.getLogger("batch")
RECALL_KS = (1, 5, 10)


class EvalError(ValueError):
    """A dataset that cannot be evaluated (empty, unreadable, images that all failed)."""


# --- datasets ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """Images with their label index, and the label names (sub-folders)."""

    labels: list[str]
    images: list[str]
    targets: np.ndarray


@dataclass(frozen=True)
class Captioned:
    """Distinct images, the captions, and for each caption its image's position."""

    images: list[str]
    texts: list[str]
    image_of_text: np.ndarray


@dataclass(frozen=True)
class Pairs:
    images: list[str]
    texts: list[str]


def read_labelled(folder: Path) -> Labelled:
    """`folder/<label>/<image>`: the label is the sub-folder's name, underscores as spaces ("golden_retriever")."""
    labels, images, targets = [], [], []
    for i, sub in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        labels.append(sub.name.replace("_", " "))
        for image in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            images.append(str(image.resolve()))
            targets.append(i)
    if len(labels) < 2 or not images:
        raise EvalError(f"{folder}: expected a sub-folder of images per label (at least two labels)")
    return Labelled(labels, images, np.asarray(targets))


def _rows(path: Path, image_column: str, text_column: str) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {image_column, text_column} - set(reader.fieldnames or [])
        if missing:
            raise EvalError(f"{path}: no column {', '.join(sorted(missing))} (columns: {reader.fieldnames})")
        rows = [(r[image_column], r[text_column]) for r in reader if r[image_column] and r[text_column]]
    if not rows:
        raise EvalError(f"{path}: no rows with both {image_column} and {text_column}")
    base = path.resolve().parent
    return [(str(base / image) if not _is_remote(image) and not Path(image).is_absolute() else image, text)
            for image, text in rows]


def _is_remote(value: str) -> bool:
    return value.startswith(("http://", "https://", "data:"))


def read_captioned(path: Path, image_column: str, text_column: str) -> Captioned:
    images: dict[str, int] = {}
    texts, owners = [], []
    for image, text in _rows(path, image_column, text_column):
        owners.append(images.setdefault(image, len(images)))
        texts.append(text)
    return Captioned(list(images), texts, np.asarray(owners))


def read_pairs(path: Path, image_column: str, text_column: str) -> Pairs:
    rows = _rows(path, image_column, text_column)
    return Pairs([image for image, _ in rows], [text for _, text in rows])


# --- metrics (CLIP_benchmark's definitions) -------------------------------------------------------------------


def zero_shot_metrics(image_vectors: np.ndarray, classifier: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """top-1 / top-5 accuracy and mean per-class recall of unit image vectors against unit label vectors."""
    logits = image_vectors.astype(np.float64) @ classifier.astype(np.float64).T
    ranked = np.argsort(-logits, axis=1, kind="stable")
    out = {"top1": float(np.mean(ranked[:, 0] == targets))}
    if classifier.shape[0] >= 5:
        out["top5"] = float(np.mean((ranked[:, :5] == targets[:, None]).any(axis=1)))
    recalls = [np.mean(ranked[targets == c, 0] == c) for c in np.unique(targets)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of queries (rows) with at least one positive among their k best-scoring candidates."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.take_along_axis(positives, top, axis=1).any(axis=1)))


def retrieval_metrics(text_vectors: np.ndarray, image_vectors: np.ndarray,
                      image_of_text: np.ndarray) -> dict[str, float]:
    scores = text_vectors.astype(np.float64) @ image_vectors.astype(np.float64).T  # (texts, images)
    positives = np.zeros(scores.shape, dtype=bool)
    positives[np.arange(len(image_of_text)), image_of_text] = True
    out = {}
    for k in RECALL_KS:
        if k <= scores.shape[1]:
            out[f"text_to_image_recall@{k}"] = recall_at_k(scores, positives, k)
        if k <= scores.shape[0]:
            out[f"image_to_text_recall@{k}"] = recall_at_k(scores.T, positives.T, k)
    return out


def clip_score_stats(image_vectors: np.ndarray, text_vectors: np.ndarray) -> dict[str, float]:
    cosine = np.einsum("ij,ij->i", image_vectors.astype(np.float64), text_vectors.astype(np.float64))
    scores = np.maximum(100.0 * cosine, 0.0)
    p5, median, p95 = np.percentile(scores, [5, 50, 95])
    return {"count": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "p5": float(p5), "median": float(median), "p95": float(p95),
            "max": float(scores.max())}


# --- embedding through a target ---------------------------------------------------------------------------------


class Embedder:
    """Unit vectors of many texts or images through a batch target (the service or the model in this process), in
    requests of `batch_size`, `concurrency` at a time; counts what it embedded and how long that took."""

    def __init__(self, target: Any, batch_size: int, concurrency: int) -> None:
        self.target = target
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.items = 0
        self.seconds = 0.0

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = [Row(i, str(i), text, None) for i, text in enumerate(texts)]
        return np.stack([r.text_embedding for r in self._embed(rows, "texts")])

    def images(self, images: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(vectors of the images that could be used, their positions); failed ones are logged and left out."""
        rows = [Row(i, str(i), None, image) for i, image in enumerate(images)]
        results = self._embed(rows, "images", allow_errors=True)
        ok = [i for i, r in enumerate(results) if r.image_embedding is not None]
        if not ok:
            raise EvalError(f"none of the {len(images)} images could be used ({results[0].error})")
        if len(ok) < len(images):
            log.warning("%d of %d images could not be used and are left out", len(images) - len(ok), len(images))
        return np.stack([results[i].image_embedding for i in ok]), ok

    def _embed(self, rows: list[Row], what: str, allow_errors: bool = False) -> list[Any]:
        started = time.perf_counter()
        parts = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = [r for part in pool.map(self.target.embed, parts) for r in part]
        self.seconds += time.perf_counter() - started
        self.items += len(rows)
        errors = [r.error for r in results if r.error is not None]
        if errors and not allow_errors:
            raise EvalError(f"{len(errors)} {what} failed: {errors[0].code}: {errors[0].message}")
        return results


def evaluate(embedder: Embedder, *, labelled: Labelled | None = None, templates: Sequence[str] = ("{}",),
             captioned: Captioned | None = None, pairs: Pairs | None = None) -> dict[str, Any]:
    """Every asked-for measurement with one model."""
    out: dict[str, Any] = {}
    if labelled is not None:
        prompts = [fill(t, label) for label in labelled.labels for t in templates]
        classifier = mean_of_templates(embedder.texts(prompts), len(templates))
        vectors, ok = embedder.images(labelled.images)
        out["zero_shot"] = {**zero_shot_metrics(vectors, classifier, labelled.targets[ok]), "images": len(ok),
                            "labels": len(labelled.labels), "templates": len(templates)}
    if captioned is not None:
        vectors, ok = embedder.images(captioned.images)
        keep = np.isin(captioned.image_of_text, ok)
        position = {image: j for j, image in enumerate(ok)}
        texts = [t for t, k in zip(captioned.texts, keep) if k]
        out["retrieval"] = {**retrieval_metrics(embedder.texts(texts), vectors,
                                                np.asarray([position[i] for i in captioned.image_of_text[keep]])),
                            "images": len(ok), "texts": len(texts)}
    if pairs is not None:
        vectors, ok = embedder.images(pairs.images)
        out["clip_score"] = clip_score_stats(vectors, embedder.texts([pairs.texts[i] for i in ok]))
    out["items_per_s"] = embedder.items / embedder.seconds if embedder.seconds else None
    return out


# --- the command ------------------------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("eval", help="zero-shot accuracy, retrieval recall and CLIP scores per model",
                                 description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data (one or more)")
    data.add_argument("--zero-shot", type=Path, metavar="FOLDER", help="a sub-folder of images per label")
    data.add_argument("--retrieval", type=Path, metavar="CSV", help="image and caption columns, a row per caption")
    data.add_argument("--clip-score", type=Path, metavar="CSV", help="image and text columns, a row per pair")
    data.add_argument("--image-column", default="image")
    data.add_argument("--text-column", default="caption")
    data.add_argument("--templates", default="openai_imagenet",
                      help=f"zero-shot prompts: a named set ({', '.join(TEMPLATE_SETS)}; default openai_imagenet), "
                           "or templates with {} separated by '|', e.g. 'a photo of a {}.|a {}'")
    options.add_target_args(parser, required=True, with_model=False)
    parser.add_argument("--model", dest="models", action="append",
                        help="a model to evaluate (repeat to compare: --model english --model siglip2-b16); "
                             "default: the service's default model, or $MODEL_VARIANT with --local")
    parser.add_argument("--batch-size", type=int, default=32, help="items per request (default 32)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests at once (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--max-retries", type=int, default=10)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write every number here")


def templates_of(value: str) -> tuple[str, ...]:
    return tuple(resolve_templates(value if value in TEMPLATE_SETS else value.split("|")) or ("{}",))


def cmd_eval(spec: EvalSpec, make_target: Callable[[TargetSpec, Path], Any] | None = None) -> int:
    """Every model of ``spec.models`` (None: the target's default) on the data given; ``make_target(target,
    rows)`` builds each model's target (default: options.make_target)."""
    if not (spec.zero_shot or spec.retrieval or spec.clip_score):
        raise EvalError("nothing to evaluate: give --zero-shot FOLDER, --retrieval CSV and/or --clip-score CSV")
    labelled = read_labelled(spec.zero_shot) if spec.zero_shot else None
    captioned = read_captioned(spec.retrieval, spec.image_column, spec.text_column) if spec.retrieval else None
    pairs = read_pairs(spec.clip_score, spec.image_column, spec.text_column) if spec.clip_score else None
    templates = templates_of(spec.templates)
    rows = spec.zero_shot or spec.retrieval or spec.clip_score
    build = make_target or (lambda target, where: options.make_target(target, where, RetryTally()))
    results: dict[str, Any] = {}
    for model in spec.models:
        target = build(dataclasses.replace(spec.target, model=model), rows)
        try:
            name = target.describe().get("variant") or model or "default"
            log.info("evaluating %s", name)
            results[name] = evaluate(Embedder(target, spec.batch_size, spec.concurrency), labelled=labelled,
                                     templates=templates, captioned=captioned, pairs=pairs)
        finally:
            target.close()
    if spec.json:
        spec.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """One row per model, one column per number measured."""
    columns: list[tuple[str, str]] = []
    for result in results.values():
        for section, values in result.items():
            for key in values if isinstance(values, dict) else [None]:
                if key not in ("images", "labels", "templates", "texts", "count") and (section, key) not in columns:
                    columns.append((section, key))
    header = ["model"] + [f"{s} {k}" if k else s for s, k in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [name]
        for section, key in columns:
            value = result.get(section)
            value = value.get(key) if isinstance(value, dict) and key else value
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
