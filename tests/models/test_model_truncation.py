"""Long texts: a bounded prefix is tokenized, and the ids equal tokenizing the whole text and cutting it.

Both tokenizers: open_clip's real BPE (its vocabulary ships with open_clip) and a Hugging Face
XLM-R Unigram tokenizer built here with Chinese, Japanese and English pieces (the real 250k
SentencePiece model cannot be fetched offline; the pipeline, Metaspace pre-tokenizer and Viterbi
segmentation are the same code).
"""

from __future__ import annotations

import random

import pytest

from models import truncation
from models.mclip_tower import MClipTextTower

CJK = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400))
KANA = "".join(chr(c) for c in range(0x3041, 0x3097))
WORDS = ("a", "photo", "of", "the", "cat", "internationalization", "sunset", "red", "Zürich", "naïve", "car")


def texts(rng: random.Random) -> dict[str, str]:
    """Long texts of several kinds, each far over both contexts."""
    english = " ".join(rng.choice(WORDS) for _ in range(3000))
    return {
        "english": english,
        "chinese, no spaces": "".join(rng.choice(CJK) for _ in range(6000)),
        "japanese, no spaces": "".join(rng.choice(KANA + CJK[:50]) for _ in range(6000)),
        "one long word": "ab" * 5000,
        "spaces then words": " " * 20_000 + english,
        "punctuation and entities": ("&amp; <b>x</b> 3.14, e=mc^2!! " * 400),
        "emoji and mixed": "".join(rng.choice(["🐱", "猫", "cat ", "Katze ", "\n", "\t", "é"]) for _ in range(8000)),
    }


@pytest.fixture(scope="module")
def clip_tower(english_encoder):
    return english_encoder._text


@pytest.fixture(scope="module")
def xlmr_tokenizer():
    """A Unigram XLM-R tokenizer with competing multi-character pieces, so segmentations have real choices."""
    from transformers import XLMRobertaTokenizer

    rng = random.Random(1)
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -6.0)]
    vocab += [("\u2581" + w.lower(), -4.0) for w in WORDS] + [(w[:3], -7.0) for w in WORDS]
    vocab += [(c, -9.0) for c in sorted(set("".join(WORDS).lower() + "abcdefghijklmnopqrstuvwxyz0123456789"))]
    vocab += [(c, -10.0 - rng.random()) for c in CJK + KANA]
    vocab += [(rng.choice(CJK) + rng.choice(CJK), -12.0 - rng.random()) for _ in range(3000)]
    vocab += [(rng.choice(KANA) + rng.choice(KANA) + rng.choice(KANA), -13.0 - rng.random()) for _ in range(2000)]
    seen: set[str] = set()
    vocab = [(p, s) for p, s in vocab if not (p in seen or seen.add(p))] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)


def clip_reference(tower, text: str) -> tuple[tuple[int, ...], bool]:
    """open_clip's own tokenizer call on the whole text (cut with EOT kept), and whether it had to cut."""
    row = tower.tokenizer([text])[0].tolist()
    ids = tuple(t for t in row if t != 0)
    return ids, len(tower.tokenizer.encode(text)) + 2 > tower.context_length


@pytest.mark.parametrize("kind", list(texts(random.Random(0))))
def test_clip_ids_equal_tokenizing_the_whole_text(clip_tower, kind):
    text = texts(random.Random(0))[kind]
    for length in (10, 80, 300, 1000, len(text)):
        prepared = clip_tower.prepare(text[:length])
        assert (prepared.ids, prepared.truncated) == clip_reference(clip_tower, text[:length]), (kind, length)
        assert len(prepared.ids) <= clip_tower.context_length


@pytest.mark.parametrize("kind", list(texts(random.Random(0))))
def test_xlmr_ids_equal_tokenizing_the_whole_text(xlmr_tokenizer, kind):
    tower = MClipTextTower(model=None, tokenizer=xlmr_tokenizer, max_length=512)
    text = texts(random.Random(0))[kind]
    for length in (10, 600, 2500, len(text)):
        prepared = tower.prepare(text[:length])
        whole = xlmr_tokenizer(text[:length], truncation=False, verbose=False)["input_ids"]
        cut = xlmr_tokenizer(text[:length], truncation=True, max_length=512)["input_ids"]
        assert prepared.ids == tuple(cut), (kind, length)
        assert prepared.truncated == (len(whole) > 512), (kind, length)


def test_a_huge_text_costs_a_bounded_prefix(clip_tower, xlmr_tokenizer):
    """A million characters: the tokenizers see a few thousand of them, whatever the text."""
    rng = random.Random(2)
    huge = " ".join(rng.choice(WORDS) for _ in range(200_000))[:1_000_000]
    seen: list[int] = []

    def counting(tokenize):
        def wrapped(text):
            seen.append(len(text))
            return tokenize(text)
        return wrapped

    ids, cut = truncation.first_tokens(counting(clip_tower.tokenizer.encode), huge, 75)
    assert cut and len(ids) == 75 and sum(seen) < 20_000, seen
    seen.clear()
    content = lambda t: xlmr_tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    ids, cut = truncation.first_tokens(counting(content), huge, 510)
    assert cut and len(ids) == 510 and sum(seen) < 60_000, seen


def test_encoders_cut_long_texts_and_say_so(english_encoder, multilingual_encoder):
    for encoder in (english_encoder, multilingual_encoder):
        result = encoder.encode_text(["a cat", "red car " * 5000, "猫 " * 20_000])  # the tiny XLM-R fuses unknown runs
        assert result.truncated == [1, 2]
        assert result.embeddings.shape == (3, encoder.info.dim)
