"""open_clip's evaluation preprocessing in numpy + PIL, for the ONNX runtime (which must not import torch).

Same operations in the same order as `open_clip.transform.image_transform(..., is_train=False)` with the
shortest-edge resize (CLIP) or the squash to the square (SigLIP): torchvision's Resize on a PIL image is PIL's
own resize at torchvision's computed size, CenterCrop is PIL's crop at torchvision's rounded offsets, ToTensor
is a float32 division by 255 and Normalize float32 arithmetic, so the arrays are identical (tested against
open_clip). The `longest` mode is not reimplemented: `supports` says so, and the loader uses torch's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


_MODES = ("shortest", "squash")


def supports(preprocess: dict[str, Any]) -> bool:
    return preprocess.get("resize_mode", "shortest") in _MODES and preprocess.get("interpolation") in _RESAMPLE


def transform_for(preprocess: dict[str, Any]) -> "ShortestEdgeTransform":
    """The manifest's preprocessing as a numpy transform (ValueError where `supports` says no)."""
    if not supports(preprocess):
        raise ValueError(f"numpy preprocessing covers resize_mode {' and '.join(_MODES)} with bicubic/bilinear, "
                         f"not {preprocess}")
    return SquashTransform(preprocess) if preprocess["resize_mode"] == "squash" else ShortestEdgeTransform(preprocess)


class ShortestEdgeTransform:
    """Shortest edge to the size, then the centre square (CLIP)."""

    def __init__(self, preprocess: dict[str, Any]) -> None:
        self.size = int(preprocess["image_size"])
        self.resample = _RESAMPLE[preprocess["interpolation"]]
        self.mean = np.asarray(preprocess["mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(preprocess["std"], dtype=np.float32)[:, None, None]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) float32. Pure function of its input; safe from many threads."""
        return self._normalized(self._square(image).convert("RGB"))

    def _square(self, image: Image.Image) -> Image.Image:
        size = self.size
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=self.resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        return image.crop((left, top, left + size, top + size))

    def _normalized(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((pixels.transpose(2, 0, 1) - self.mean) / self.std, dtype=np.float32)


class SquashTransform(ShortestEdgeTransform):
    """The whole picture resized to the square, aspect ratio not kept (SigLIP; torchvision's Resize((S, S)))."""

    def _square(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), resample=self.resample)
