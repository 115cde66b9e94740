"""Which float type the towers run in: fp32 (exact to the reference) or bf16 weights (2-3x faster).

bf16 only pays where the CPU computes it natively (AVX512-BF16 or AMX on x86, BF16 on Arm); elsewhere
torch emulates it and it is slower than fp32, so `auto` looks at the CPU's flags. AVX512-BF16 without AMX
(AMD EPYC Zen 4/5) still favours bf16, measured in bench/RESULTS.md: images 40-60% faster through the service
than exact ONNX fp32 (1.8x on multilingual), single texts a third slower. Autocast is never used: on CPU it spends most of its time converting
tensors (measured slower than fp32).
"""

from __future__ import annotations

from pathlib import Path

CHOICES = ("auto", "fp32", "bf16", "fp16")
# /proc/cpuinfo flags (x86) and Features (Arm) that mean bf16 matrix math in hardware.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first CPU's feature flags ("flags" on x86, "Features" on Arm); empty if unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


# On a CUDA GPU `auto` is fp16: tensor cores on every GPU Cloud Run offers (L4), its cosine to fp32 measured
# by bench/bench_gpu.py (>= 0.999 per tower required).
CUDA_AUTO = "fp16"


def resolve(precision: str, cpuinfo: Path = CPUINFO, device: str = "cpu") -> str:
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> 'fp32' | 'bf16' | 'fp16' (fp16 on a GPU only)."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}")
    if precision == "auto":
        if device == "cuda":
            return CUDA_AUTO
        return "bf16" if has_native_bf16(cpuinfo) else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ValueError("PRECISION=fp16 runs on a GPU (DEVICE=cuda); on the CPU use fp32 or bf16")
    return precision


def torch_dtype(resolved: str):  # noqa: ANN201 - torch.dtype, imported lazily
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolved]
