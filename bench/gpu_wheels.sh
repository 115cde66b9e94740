#!/usr/bin/env bash
# Here (with PyPI): download the wheels the GPU machine lacks for bench/bench_gpu.py, for its Python 3.12
# (../shared/notes/gpu.md lists what it has: torch, torchvision, transformers, timm, numpy, onnxruntime, pytest,
# ...). About 17 MB into bench/out/gpu-wheels, which `run` carries (carry: ["bench/out/gpu-wheels"]).
# --no-deps each: their own dependencies are either in this list or already on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/gpu-wheels
mkdir -p "$out"
python3 -m pip download --quiet --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --no-deps -d "$out" \
  open_clip_torch==3.3.0 multilingual-clip==1.0.10 ftfy wcwidth regex \
  "flask>=3.1,<4" werkzeug itsdangerous blinker click jinja2 markupsafe "gunicorn>=23" \
  "pydantic>=2.9,<3" pydantic-core annotated-types typing-inspection typing-extensions "orjson>=3.10" \
  onnx onnxscript onnx-ir ml-dtypes "protobuf>=6.31.1" pytest-timeout
find "$out" -name "*.whl" | wc -l
du -sh "$out"
