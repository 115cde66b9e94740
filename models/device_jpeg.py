"""JPEG bytes -> model input on the towers' device (`IMAGE_DECODE=gpu`): nvJPEG through torchvision, then
open_clip's eval preprocessing as tensor ops on the same device.

Why: on a GPU the forward pass of a ViT-B/32 costs well under a millisecond per image while a CPU core needs
6-9 ms to decode and resize a 640x480 JPEG, so a GPU instance that decodes on its 4-8 vCPUs leaves the GPU
idle. Only the inputs/ checks (byte and pixel limits, formats, aspect ratio) run on the CPU first, from the
header. Anything this path cannot take returns None and goes the CPU way, so the CPU path decides every
error: a JPEG that nvJPEG refuses is decoded by Pillow, which either embeds it or reports that image's
`invalid_image`, never a failed batch.

The resize is torchvision's antialiased bicubic on uint8 (rounded and clamped as Pillow's is), the crop and
the normalisation open_clip's; the embeddings' cosine to the exact CPU path is measured in
tests/models/test_device_jpeg.py (CPU) and bench/bench_gpu.py (GPU).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# Header modes whose RGB conversion nvJPEG and Pillow agree on; CMYK/YCCK JPEGs take the CPU path.
DEVICE_MODES = frozenset({"RGB", "L"})
RESIZE_MODES = ("shortest", "squash")
_EOI = b"\xff\xd9"
_TAIL = 4096  # how far back from the end the EOI marker is looked for, past zero padding


class DeviceJpeg:
    """Decode + preprocess one JPEG on `device`. Thread-safe: each call runs on its caller's CUDA stream and
    waits for its own work, so the tensor it returns is ready for the inference thread's stream."""

    def __init__(self, preprocess: dict[str, Any], device: torch.device | str) -> None:
        from torchvision.transforms import InterpolationMode

        if preprocess["resize_mode"] not in RESIZE_MODES:
            raise ValueError(f"resize_mode {preprocess['resize_mode']!r} is decoded on the CPU only")
        self.device = torch.device(device)
        self.image_size = int(preprocess["image_size"])
        self.squash = preprocess["resize_mode"] == "squash"
        self.interpolation = InterpolationMode(preprocess["interpolation"])
        self.mean = torch.tensor(preprocess["mean"], device=self.device).view(3, 1, 1)
        self.std = torch.tensor(preprocess["std"], device=self.device).view(3, 1, 1)

    def takes(self, image_format: str, mode: str, data: bytes) -> bool:
        """Whether this path takes the image: a baseline/progressive JPEG in RGB or grey that ends where a
        JPEG ends (a truncated file goes to Pillow, whose error the CPU path reports)."""
        return image_format == "JPEG" and mode in DEVICE_MODES and data[-_TAIL:].rstrip(b"\x00").endswith(_EOI)

    def __call__(self, data: bytes) -> torch.Tensor | None:
        """(3, S, S) float32 on the device, or None when the decoder refuses the bytes (the CPU decides)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as exc:
            log.info("the device JPEG decoder refused an image (%s); decoding it on the CPU", str(exc)[:120])
            return None
        with torch.inference_mode():
            tensor = self._preprocess(pixels)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return tensor

    def _preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import functional as F

        size = [self.image_size, self.image_size] if self.squash else self.image_size
        resized = F.resize(pixels, size, interpolation=self.interpolation, antialias=True)
        cropped = F.center_crop(resized, [self.image_size, self.image_size])
        return (cropped.float() / 255.0 - self.mean) / self.std


def device_jpeg_for(preprocess: dict[str, Any], requested: str) -> DeviceJpeg | None:
    """The GPU's decoder `IMAGE_DECODE` asks for, on a CUDA device, checked on a real JPEG now (not on the first
    request). `requested`: "cpu" (None), "gpu" (a working decoder or ValueError), "auto" (the decoder when it
    works, else None: the CPU path)."""
    if requested == "cpu":
        return None
    try:
        decoder = DeviceJpeg(preprocess, "cuda")
        if decoder(_probe_jpeg()) is None:
            raise RuntimeError("the decoder refused a valid JPEG")
        return decoder
    except (ImportError, RuntimeError, ValueError) as exc:
        if requested == "gpu":
            raise ValueError(f"IMAGE_DECODE=gpu, but this torchvision cannot decode JPEGs on the GPU: {exc}") from None
        log.warning("JPEGs are decoded on the CPU: the GPU decoder is not usable here (%s)", exc)
        return None


def _probe_jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(out, format="JPEG")
    return out.getvalue()
