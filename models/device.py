"""Where the towers run: the CPU or a CUDA GPU (`DEVICE=auto|cpu|cuda`).

`auto` looks for an NVIDIA driver before it imports anything (so a CPU service, and the ONNX runtime's
torch-free start, pay nothing), then asks torch. `cuda` without a usable GPU is a boot error, not a silent
fallback: a GPU instance that serves from its CPU would be slow and cost the GPU's price.
"""

from __future__ import annotations

import glob
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


class DeviceUnavailable(RuntimeError):
    """DEVICE=cuda, and torch sees no GPU; the message says what was found."""


def driver_present() -> bool:
    return NVIDIA_DRIVER.exists() or bool(glob.glob("/dev/nvidia[0-9]*"))


def resolve_device(requested: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' | 'cuda'."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not driver_present()):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailable(f"DEVICE=cuda, but torch {torch.__version__} ({build}) sees no GPU "
                                f"(NVIDIA driver {'found' if driver_present() else 'not found'}). Run on a GPU "
                                "instance with the CUDA image (deploy.sh cloudrun --gpu), or set DEVICE=cpu/auto.")
    return "cpu"


def require_requested_gpu(device: str, image_decode: str = "auto") -> None:
    """Stop a boot whose settings ask for a GPU that is not there (DEVICE=cuda, or IMAGE_DECODE=gpu), before
    the port opens: raises DeviceUnavailable saying which setting asked."""
    if device == "cuda":
        resolve_device("cuda")
    elif image_decode == "gpu" and resolve_device(device) != "cuda":
        raise DeviceUnavailable("IMAGE_DECODE=gpu decodes JPEGs on the GPU, and the towers run on the CPU here: "
                                "set IMAGE_DECODE=cpu or auto, or run on a GPU instance")


def exact_fp32_on_gpu() -> None:
    """fp32 means fp32 on the GPU too: cuDNN convolutions (the ViT's patch embedding) default to TF32, whose
    10-bit mantissa moves an embedding by about 1e-3; PRECISION=fp32 promises the reference's vectors."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def gpu_name() -> str | None:
    """The GPU's name, if torch has initialised CUDA (None on the CPU)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def gpu_memory_bytes() -> float:
    """Bytes torch holds on the GPU now (0 on the CPU, and when torch was never imported)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return float(torch.cuda.memory_allocated(0))
