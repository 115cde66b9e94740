"""Tokenize only as much of a text as the context can use, with the same ids as tokenizing it all.

A 100,000-character text cut to 77 tokens must not cost a tokenizer pass over all of it (the
CLIP BPE is pure Python). `first_tokens` tokenizes growing prefixes instead: a prefix that yields
more than `keep + MARGIN` tokens proves the text is longer than the context, and its first `keep`
tokens are the whole text's first `keep` (tokenizers work word by word, and the prefix is cut at
whitespace where there is any near the cut; with none, as in Chinese or Japanese, only the last few
tokens before the cut can differ, and those are the MARGIN that is never used).
"""

from __future__ import annotations

from typing import Callable

# Tokens at the end of a prefix that may differ from the whole text's (the word the cut splits).
MARGIN = 8
# First prefix: this many characters per token needed (English averages 4-5 per token), then x4.
CHARS_PER_TOKEN = 4
GROWTH = 4
# How far back from a cut to look for whitespace to cut at instead.
BOUNDARY_LOOKBACK = 256


def first_tokens(tokenize: Callable[[str], list[int]], text: str, keep: int) -> tuple[list[int], bool]:
    """(the first `keep` content token ids of `text`, whether it has more than `keep`).

    `tokenize` maps a text to its content ids (no special tokens). The work is bounded by the
    context, not by the text: for any text the last prefix tokenized is at most GROWTH times the
    first one that was long enough.
    """
    end = CHARS_PER_TOKEN * (keep + MARGIN)
    while end < len(text):
        ids = tokenize(text[:cut_at_whitespace(text, end)])
        if len(ids) > keep + MARGIN:
            return ids[:keep], True
        end *= GROWTH
    ids = tokenize(text)
    return ids[:keep], len(ids) > keep


def cut_at_whitespace(text: str, end: int) -> int:
    """`end`, moved back to just after the last whitespace within BOUNDARY_LOOKBACK characters, if any."""
    start = max(0, end - BOUNDARY_LOOKBACK)
    for i in range(end - 1, start - 1, -1):
        if text[i].isspace():
            return i + 1
    return end
