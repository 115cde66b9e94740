"""clipserve-batch eval: the standard numbers on data whose answers are known, and the command end to end.

A deterministic "colour" encoder stands in for a model: an image's vector is its colour's axis (plus a fixed small
tilt that orders ties), a text's the axis of the colour word it contains. Datasets are built so each number is
known by hand; the metrics are also checked against a brute-force loop of CLIP_benchmark's definitions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch import eval as evaluation
from batch.cli import main
from batch.local_target import LocalTarget
from infra.settings import Settings
from models.encoder import ModelInfo, TextEncoding

COLOURS = {"blue": (0, 0, 255), "green": (0, 160, 0), "orange": (255, 140, 0), "purple": (128, 0, 128),
           "red": (255, 0, 0), "yellow": (255, 255, 0)}
NAMES = sorted(COLOURS)
TILT = np.array([0.06, 0.05, 0.04, 0.03, 0.02, 0.01])  # a total order on the other labels: blue first, yellow last


def axis(name: str) -> np.ndarray:
    vector = np.eye(len(NAMES))[NAMES.index(name)] + TILT
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class ColourEncoder:
    info = ModelInfo(variant="colours", architecture="colours", text_tower="t", image_tower="i", dim=6, image_size=8,
                     context_length=77, logit_scale=100.0)

    def prepare_image(self, image):
        return np.asarray(image.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0)

    def prepare_encoded_image(self, *args):
        return None

    def encode_images(self, batch, normalize=True):
        nearest = [min(NAMES, key=lambda n: np.abs(np.asarray(COLOURS[n]) - pixel).sum()) for pixel in batch]
        return np.stack([axis(n) for n in nearest])

    def encode_text(self, texts, normalize=True):
        words = [next((n for n in NAMES if n in t), "blue") for t in texts]
        return TextEncoding(np.stack([axis(w) for w in words]), [])


def picture(path: Path, colour: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
    return str(path)


@pytest.fixture
def target(tmp_path):
    return LocalTarget(ColourEncoder(), search_dirs=[tmp_path], settings=Settings())


def test_zero_shot_numbers_on_a_folder_with_two_mislabelled_images(tmp_path, target):
    for name in NAMES:
        for i in range(3):
            picture(tmp_path / "photos" / name / f"{i}.png", name)
    picture(tmp_path / "photos/red/2.png", "green")     # wrong: red comes 5th after green -> top-5 hit
    picture(tmp_path / "photos/yellow/2.png", "blue")   # wrong: yellow comes last -> top-5 miss
    data = evaluation.read_labelled(tmp_path / "photos")
    result = evaluation.evaluate(evaluation.Embedder(target, 4, 2), labelled=data, templates=("a photo of a {}.", "{}"))
    zero_shot = result["zero_shot"]
    assert zero_shot["top1"] == pytest.approx(16 / 18) and zero_shot["top5"] == pytest.approx(17 / 18)
    assert zero_shot["mean_per_class_recall"] == pytest.approx((4 + 2 * 2 / 3) / 6)
    assert (zero_shot["images"], zero_shot["labels"], zero_shot["templates"]) == (18, 6, 2)
    assert result["items_per_s"] > 0


def test_retrieval_recall_on_captions_with_one_wrong(tmp_path, target):
    rows = ["image,caption"]
    for name in ("red", "green", "blue", "yellow"):
        image = picture(tmp_path / f"{name}.png", name)
        rows += [f"{image},a {name} thing", f"{image},{name}"]
    rows.append(f"{tmp_path / 'blue.png'},a green ball")  # a caption of the blue image that names green
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    data = evaluation.read_captioned(tmp_path / "captions.csv", "image", "caption")
    assert (len(data.images), len(data.texts)) == (4, 9)
    result = evaluation.evaluate(evaluation.Embedder(target, 4, 1), captioned=data)["retrieval"]
    assert result["text_to_image_recall@1"] == pytest.approx(8 / 9)  # the green-ball caption finds green first
    assert result["image_to_text_recall@1"] == 1.0  # every image's best caption is one of its own
    assert "text_to_image_recall@5" not in result  # only 4 images to rank
    assert result["image_to_text_recall@5"] == 1.0


def test_the_metrics_are_clip_benchmarks_definitions_against_brute_force():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    image_of_text = rng.integers(0, 30, 50)
    got = evaluation.retrieval_metrics(texts, images, image_of_text)
    scores = texts @ images.T
    for k in (1, 5, 10):
        t2i = np.mean([image_of_text[t] in np.argsort(-scores[t])[:k] for t in range(50)])
        i2t = np.mean([any(image_of_text[t] == i for t in np.argsort(-scores[:, i])[:k]) for i in range(30)])
        assert got[f"text_to_image_recall@{k}"] == pytest.approx(t2i)
        assert got[f"image_to_text_recall@{k}"] == pytest.approx(i2t)
    classifier, targets = rng.normal(size=(7, 8)), rng.integers(0, 7, 30)
    got = evaluation.zero_shot_metrics(images, classifier, targets)
    logits = images @ classifier.T
    assert got["top1"] == pytest.approx(np.mean(logits.argmax(1) == targets))
    assert got["top5"] == pytest.approx(np.mean([t in np.argsort(-row)[:5] for row, t in zip(logits, targets)]))


def test_clip_score_distribution(tmp_path, target):
    rows = ["image,caption"] + [f"{picture(tmp_path / f'{n}.png', n)},{n}" for n in ("red", "green")]
    rows.append(f"{tmp_path / 'red.png'},blue")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    stats = evaluation.evaluate(evaluation.Embedder(target, 8, 1),
                                pairs=evaluation.read_pairs(tmp_path / "pairs.csv", "image", "caption"))["clip_score"]
    mismatch = 100 * float(axis("red") @ axis("blue"))
    assert stats["count"] == 3 and stats["max"] == pytest.approx(100, abs=1e-4)
    assert stats["min"] == pytest.approx(mismatch, abs=1e-4) and stats["mean"] == pytest.approx((200 + mismatch) / 3, abs=1e-4)


def test_the_command_compares_two_models_in_one_table_and_json(tiny_model_dir, tmp_path, capsys):
    for name in ("red", "blue"):
        for i in range(2):
            picture(tmp_path / "photos" / name / f"{i}.png", name)
    out = tmp_path / "eval.json"
    code = main(["eval", "--zero-shot", str(tmp_path / "photos"), "--templates", "a photo of a {}.|{}", "--local",
                 "--model-dir", str(tiny_model_dir), "--model", "english", "--model", "multilingual",
                 "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert list(results) == ["english", "multilingual"]
    for result in results.values():  # random weights: any accuracy, but the right shape
        assert 0 <= result["zero_shot"]["top1"] <= 1 and result["zero_shot"]["images"] == 4
        assert result["items_per_s"] > 0
    table = capsys.readouterr().out
    assert "| english |" in table and "| multilingual |" in table and "zero_shot top1" in table


def test_bad_input_says_what_is_wrong(tmp_path):
    (tmp_path / "one").mkdir()
    with pytest.raises(evaluation.EvalError, match="at least two labels"):
        evaluation.read_labelled(tmp_path)
    (tmp_path / "c.csv").write_text("picture,text\nx,y\n")
    with pytest.raises(evaluation.EvalError, match="no column"):
        evaluation.read_captioned(tmp_path / "c.csv", "image", "caption")
    assert main(["eval", "--local", "--model-dir", str(tmp_path)]) == 1  # nothing to evaluate
    with pytest.raises(ValueError, match="has no"):
        evaluation.templates_of("a photo|of")


def test_through_a_service_serving_two_models_each_request_names_its_model(tiny_model_dir, tmp_path,
                                                                          multilingual_encoder):
    """clipserve-batch embed --model and eval --model against a real gunicorn with MODELS=english,multilingual."""
    from servers import gunicorn

    (tmp_path / "items.csv").write_text("id,text\na,ein Hund\nb,a red car\n")
    for name in ("red", "blue"):
        picture(tmp_path / "photos" / name / "0.png", name)
    with gunicorn(tiny_model_dir, tmp_path / "gunicorn.log", MODELS="english,multilingual",
                  MODEL_ALIASES="accurate=multilingual") as server:
        assert main(["embed", "--input", str(tmp_path / "items.csv"), "--output", str(tmp_path / "out.jsonl"),
                     "--endpoint", server.url, "--model", "accurate"]) == 0
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        want = multilingual_encoder.encode_text(["ein Hund", "a red car"]).embeddings
        np.testing.assert_allclose([r["text_embedding"] for r in rows], want, atol=1e-6)
        assert main(["eval", "--zero-shot", str(tmp_path / "photos"), "--templates", "{}", "--endpoint", server.url,
                     "--model", "english", "--model", "accurate", "--json", str(tmp_path / "e.json")]) == 0
    assert list(json.loads((tmp_path / "e.json").read_text())) == ["english", "multilingual"]
