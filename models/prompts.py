"""Prompt templates for zero-shot classification, and label vectors built from them as open_clip builds them.

A label scores better as the mean of many phrasings ("a photo of a {}.", "a blurry photo of the {}.", ...)
than as one: CLIP's paper reports +1.5 to +5 points on ImageNet. ``label_vectors`` follows open_clip's
``build_zero_shot_classifier`` (and CLIP_benchmark's): each template's text embedded and normalized, the mean
over templates normalized again. The named sets are open_clip's own lists, as strings (a test checks them).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES: the 80 templates of CLIP's ImageNet evaluation.
OPENAI_IMAGENET = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)
# open_clip.zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES: the 7-template subset CLIP's authors also published.
SIMPLE_IMAGENET = ('itap of a {}.', 'a bad photo of the {}.', 'a origami {}.', 'a photo of the large {}.', 'a {} in a video game.', 'art of the {}.', 'a photo of the small {}.')
TEMPLATE_SETS = {"openai_imagenet": OPENAI_IMAGENET, "simple_imagenet": SIMPLE_IMAGENET}
PLACEHOLDER = "{}"


def resolve_templates(templates: list[str] | str | None) -> tuple[str, ...] | None:
    """A list of templates as given, or a named set; None when none was asked for. ValueError for a template
    without the placeholder or an unknown set name (the schemas turn it into a 400)."""
    if templates is None:
        return None
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; named sets: {', '.join(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[templates]
    missing = [i for i, t in enumerate(templates) if PLACEHOLDER not in t]
    if missing:
        raise ValueError(f"templates[{missing[0]}] has no {PLACEHOLDER} where the label goes")
    return tuple(templates)


def fill(template: str, label: str) -> str:
    """The template with the label in its placeholder (every occurrence; braces in the label stay as they are)."""
    return template.replace(PLACEHOLDER, label)


def mean_of_templates(vectors: np.ndarray, templates: int) -> np.ndarray:
    """Unit vectors of labels from the unit vectors of their prompts, label by label, ``templates`` each: the
    normalized mean (float32, as open_clip computes it)."""
    per_label = np.asarray(vectors, dtype=np.float64).reshape(-1, templates, vectors.shape[-1]).mean(axis=1)
    return (per_label / np.linalg.norm(per_label, axis=1, keepdims=True)).astype(np.float32)


def label_vectors(labels: list[str], templates: tuple[str, ...] | list[str],
                  embed: Callable[[list[str]], Any]) -> tuple[np.ndarray, list[int]]:
    """(one unit vector per label: the normalized mean of its templates' unit vectors, the labels one of whose
    prompts was cut to the context). ``embed``: unit text embeddings, the engine's TextResult (cached like texts)."""
    result = embed([fill(t, label) for label in labels for t in templates])
    cut = {i // len(templates) for i in result.truncated}
    return mean_of_templates(result.embeddings, len(templates)), sorted(cut)
