"""open_clip's evaluation preprocessing in numpy + PIL, for the ONNX runtime (which must not import torch).

Same operations in the same order as `open_clip.transform.image_transform(..., is_train=False)` with the
shortest-edge resize both shipped variants use: torchvision's Resize on a PIL image is PIL's own resize at
torchvision's computed size, CenterCrop is PIL's crop at torchvision's rounded offsets, ToTensor is a
float32 division by 255 and Normalize float32 arithmetic, so the arrays are identical (tested against
open_clip). Other resize modes are not reimplemented: `supports` says so, and the loader uses torch's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def supports(preprocess: dict[str, Any]) -> bool:
    return preprocess.get("resize_mode", "shortest") == "shortest" and preprocess.get("interpolation") in _RESAMPLE


class ShortestEdgeTransform:
    def __init__(self, preprocess: dict[str, Any]) -> None:
        if not supports(preprocess):
            raise ValueError(f"numpy preprocessing covers resize_mode=shortest with bicubic/bilinear, not {preprocess}")
        self.size = int(preprocess["image_size"])
        self.resample = _RESAMPLE[preprocess["interpolation"]]
        self.mean = np.asarray(preprocess["mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(preprocess["std"], dtype=np.float32)[:, None, None]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) float32. Pure function of its input; safe from many threads."""
        size = self.size
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=self.resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((pixels.transpose(2, 0, 1) - self.mean) / self.std, dtype=np.float32)
