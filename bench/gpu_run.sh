#!/usr/bin/env bash
# On the GPU machine (no network): install the wheels bench/gpu_wheels.sh brought that it lacks, then run the
# prepared check. Results: $OUT/gpu.json (and bench/out/gpu.json), the log beside it.
#   run(command="bash bench/gpu_run.sh", carry=["bench/out/gpu-wheels"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-bench/out}
mkdir -p "$out"
python3 - <<'PY' 2>&1 | tee "$out/gpu-install.log"
import glob, importlib.metadata as md, re, subprocess, sys
missing = []
for wheel in sorted(glob.glob("bench/out/gpu-wheels/*.whl")):
    name = re.split(r"-\d", wheel.rsplit("/", 1)[1], maxsplit=1)[0].replace("_", "-")
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(wheel)
print("installing", [m.rsplit("/", 1)[1] for m in missing], flush=True)
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *missing], check=True)
subprocess.run([sys.executable, "-m", "pip", "check"])
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-smi.txt"
timeout 500 python3 bench/bench_gpu.py --json "$out/gpu.json" 2>&1 | tail -c 20000 > "$out/gpu-bench.log"
echo "bench_gpu rc=$?"
tail -c 3000 "$out/gpu-bench.log"
