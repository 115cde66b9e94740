"""Where the unattributed serving CPU goes: OpenMP's spin-wait. The same cells with the service's torch threads
spinning after each parallel region (the default), spinning less (GOMP_SPINCOUNT) and sleeping at once
(OMP_WAIT_POLICY=PASSIVE).

    python bench/bench_wait_policy.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_serving import COMMON_ENV, measured_cell  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, ensure_bundles, machine, serving  # noqa: E402

CELLS = [("text1", 1), ("text1", 16), ("image1", 16)]
# libgomp (torch's OpenMP): threads spin up to GOMP_SPINCOUNT iterations after each parallel region
POLICIES = {"default": {}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ensure_bundles(args.bundles, ["english"])
    print(machine())
    print("| OpenMP wait | workload | clients | items/s | mean model call | service core-ms/item | p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for policy, extra in POLICIES.items():
        env = {**COMMON_ENV, "MODEL_DIR": str(args.bundles), **extra}
        with serving(env, OUT / "serving-logs" / f"wait-{policy}.log") as server:
            for workload, clients in CELLS:
                row = measured_cell(server, workload, clients, args.seconds, 2.0)
                print(f"| {policy} | {workload} | {clients} | {row['items_per_s']:.1f} | {row['mean_batch']:.1f} | "
                      f"{row['service_cpu_ms_per_item']:.2f} | {row['p50_ms']:.1f} |", flush=True)
                print(json.dumps({k: row[k] for k in ("stage_cpu_ms_per_item", "client_cpu_ms_per_request")}),
                      file=sys.stderr)


if __name__ == "__main__":
    main()
