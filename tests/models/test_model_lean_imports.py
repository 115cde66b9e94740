"""Loading a bundle imports only what its architecture needs (cold start), and nothing is lost for other code.

Each check runs in a fresh interpreter: in this test process open_clip is already fully imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["timm", "transformers", "torch._dynamo", "open_clip.factory", "torchvision.models"]

CHILD = textwrap.dedent("""
    import json, sys
    from models.loader import load_encoder
    enc = load_encoder(sys.argv[1], sys.argv[2])
    loaded = {name: name in sys.modules for name in json.loads(sys.argv[3])}
    text = enc.encode_text(["a photo of a cat"]).embeddings[0].tolist()
    # Other code in the process still sees complete packages (their __init__ runs on first use).
    import open_clip, torchvision, torchvision.ops
    complete = [callable(open_clip.create_model_and_transforms), bool(torchvision.__version__),
                callable(torchvision.ops.nms)]
    print(json.dumps({"loaded": loaded, "text": text, "complete": complete}))
""")


def run_child(variant: str, model_dir: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, variant, str(model_dir), json.dumps(HEAVY)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_english_loads_without_timm_transformers_or_dynamo(tiny_model_dir, english_encoder):
    child = run_child("english", tiny_model_dir)
    assert child["loaded"] == {name: False for name in HEAVY}
    assert child["complete"] == [True, True, True]
    # Same vectors as the fully imported process's encoder.
    assert child["text"] == english_encoder.encode_text(["a photo of a cat"]).embeddings[0].tolist()


def test_multilingual_imports_transformers_because_it_needs_it_but_not_timm(tiny_model_dir):
    child = run_child("multilingual", tiny_model_dir)
    assert child["loaded"]["transformers"] and not child["loaded"]["timm"]
    assert child["complete"] == [True, True, True]


def test_siglip_imports_timm_for_its_image_tower_but_not_transformers(siglip_model_dir):
    """Its tokenizer is read with the tokenizers library: transformers is never imported to serve it."""
    child = run_child("siglip2-b16", siglip_model_dir)
    assert child["loaded"]["timm"] and not child["loaded"]["transformers"]
    assert child["complete"] == [True, True, True]
