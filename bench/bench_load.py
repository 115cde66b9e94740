"""Load time and peak RSS: our loader against the plain library path, on real-size random bundles.

    python bench/bench_load.py [--variant english|multilingual|all] [--repeats 3] [--bundles DIR] [--json OUT]

Each measurement runs in a fresh interpreter (imports included in RSS, reported apart in
time); ours and plain alternate, so both see the same page cache. Plain paths:
  english       open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=<bundle file>)
  multilingual  open_clip.create_model_and_transforms("ViT-B-16-plus-240") + open_clip.load_checkpoint
                (the bundle keeps only the image tower), and an eager XLM-R `AutoModel.from_config` +
                `load_state_dict` for the M-CLIP text tower
Each child also embeds one text and one image; the parent checks ours and plain agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.common import DEFAULT_BUNDLES, REPO, ensure_bundles, save_json  # noqa: E402

CHILD_PRELUDE = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    import models, numpy as np, torch
    from PIL import Image
    torch.set_num_threads(int(sys.argv[3]))
    variant, bundles = sys.argv[1], sys.argv[2]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    TEXT = ["a photo of a cat on a red car"]
""")

OURS = CHILD_PRELUDE + textwrap.dedent("""
    from models.loader import load_encoder
    import open_clip, transformers  # imports are timed apart from the load
    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    enc = load_encoder(variant, bundles, threads=int(sys.argv[3]))
    t2 = time.perf_counter()
    text = enc.encode_text(TEXT).embeddings[0]
    img = enc.encode_images([enc.prepare_image(image)])[0]
""")

PLAIN = CHILD_PRELUDE + textwrap.dedent("""
    import open_clip, transformers
    import torch.nn.functional as F
    from pathlib import Path
    from safetensors.torch import load_file
    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    b = Path(bundles) / variant
    m = json.loads((b / "manifest.json").read_text())
    if variant == "english":
        model, _, preprocess = open_clip.create_model_and_transforms(m["clip"]["arch"], pretrained=str(b / m["clip"]["weights"]))
        tokenizer = open_clip.get_tokenizer(m["clip"]["arch"])
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(m["clip"]["arch"])
        open_clip.load_checkpoint(model, str(b / m["clip"]["weights"]), strict=False)
        t = m["text"]
        xlmr = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**t["base_config"]), add_pooling_layer=False)
        from multilingual_clip.Config_MCLIP import MCLIPConfig
        mc = MCLIPConfig(**t["config"])
        linear = torch.nn.Linear(mc.transformerDimensions, mc.numDims)
        state = load_file(b / t["weights"])
        xlmr.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("transformer.") and ".pooler." not in k}, strict=True)
        linear.load_state_dict({k[21:]: v for k, v in state.items() if k.startswith("LinearTransformation.")})
        del state
        tok = transformers.AutoTokenizer.from_pretrained(str(b))
        xlmr.eval()  # from_config leaves dropout on
    model.eval()
    t2 = time.perf_counter()
    with torch.no_grad():
        if variant == "english":
            text = model.encode_text(tokenizer(TEXT), normalize=True)[0].numpy()
        else:
            batch = tok(TEXT, padding=True, return_tensors="pt")
            h = xlmr(**batch)[0]
            a = batch["attention_mask"]
            text = F.normalize(linear((h * a.unsqueeze(2)).sum(1) / a.sum(1)[:, None]), dim=-1)[0].numpy()
        img = model.encode_image(preprocess(image)[None], normalize=True)[0].numpy()
""")

REPORT = textwrap.dedent("""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    hwm = int(status["VmHWM"].split()[0]) / 1024  # this process's own high-water mark
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "peak_rss_mb": peak, "vm_hwm_mb": hwm,
                      "rss_after_import_mb": rss_after_import,
                      "text": [float(x) for x in text], "image": [float(x) for x in img]}))
""")


def warm_page_cache(bundle_dir: Path) -> None:
    """Every run starts with the bundle's files in the page cache (read in chunks: stay small)."""
    for f in bundle_dir.iterdir():
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def run_child(script: str, variant: str, bundles: Path, threads: int) -> dict:
    warm_page_cache(bundles / variant)
    proc = subprocess.run([sys.executable, "-c", script + REPORT, variant, str(bundles), str(threads)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(variant: str, bundles: Path, repeats: int, threads: int) -> dict:
    runs: dict[str, list[dict]] = {"ours": [], "plain": []}
    for i in range(repeats):
        order = [("ours", OURS), ("plain", PLAIN)] if i % 2 == 0 else [("plain", PLAIN), ("ours", OURS)]
        for name, script in order:
            runs[name].append(run_child(script, variant, bundles, threads))
    diff = {k: max(abs(a - b) for a, b in zip(runs["ours"][0][k], runs["plain"][0][k])) for k in ("text", "image")}
    summary = {name: {key: statistics.median(r[key] for r in rs)
                      for key in ("import_s", "load_s", "peak_rss_mb", "vm_hwm_mb", "rss_after_import_mb")}
               for name, rs in runs.items()}
    summary["ratio_load"] = summary["ours"]["load_s"] / summary["plain"]["load_s"]
    summary["ratio_rss"] = summary["ours"]["peak_rss_mb"] / summary["plain"]["peak_rss_mb"]
    summary["max_abs_diff"] = diff
    summary["all_load_s"] = {name: [round(r["load_s"], 3) for r in rs] for name, rs in runs.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=["english", "multilingual", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    variants = ["english", "multilingual"] if args.variant == "all" else [args.variant]
    ensure_bundles(args.bundles, variants)
    results = {"machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
               "threads": args.threads, "repeats": args.repeats,
               "variants": {v: measure(v, args.bundles, args.repeats, args.threads) for v in variants}}
    print("| variant | loader | import s | load s | RSS after imports MB | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for v, r in results["variants"].items():
        for name in ("ours", "plain"):
            m = r[name]
            print(f"| {v} | {name} | {m['import_s']:.2f} | {m['load_s']:.2f} | {m['rss_after_import_mb']:.0f} "
                  f"| {m['peak_rss_mb']:.0f} |")
        print(f"| {v} | ours / plain | | {r['ratio_load']:.2f}x | | {r['ratio_rss']:.2f}x |")
    print(json.dumps(results, indent=1), file=sys.stderr)
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
