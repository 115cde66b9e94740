"""The naive serving path, only for the cold-start comparison in bench/bench_serving.py.

What a hand-rolled Flask wrapper does: at import, build the model with the libraries' plain calls
(`open_clip.create_model_and_transforms(arch, pretrained=<file>)`; for M-CLIP an eager XLM-R
`from_config` + `load_state_dict`), then serve `POST /embed/text` from the request threads.

    MODEL_DIR=bench/out/bundles-real MODEL_VARIANT=english gunicorn -c infra/gunicorn.conf.py bench.naive_app:app
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from flask import Flask, jsonify, request


def load_plain(bundle: Path):  # noqa: ANN201 - returns an encode(texts) -> tensor callable
    """The plain library path on a bundle's files; returns a function embedding texts (normalized)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    clip, text = manifest["clip"], manifest["text"]
    if text["type"] == "open_clip":
        model, _, _ = open_clip.create_model_and_transforms(clip["arch"], pretrained=str(bundle / clip["weights"]))
        tokenizer = open_clip.get_tokenizer(clip["arch"])
        model.eval()
        return lambda texts: model.encode_text(tokenizer(texts), normalize=True)
    import transformers
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from safetensors.torch import load_file

    image_model, _, _ = open_clip.create_model_and_transforms(clip["arch"])
    open_clip.load_checkpoint(image_model, str(bundle / clip["weights"]), strict=False)
    xlmr = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**text["base_config"]),
                                              add_pooling_layer=False).eval()
    config = MCLIPConfig(**text["config"])
    linear = torch.nn.Linear(config.transformerDimensions, config.numDims)
    state = load_file(bundle / text["weights"])
    xlmr.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()
                          if k.startswith("transformer.") and ".pooler." not in k}, strict=True)
    linear.load_state_dict({k.removeprefix("LinearTransformation."): v for k, v in state.items()
                            if k.startswith("LinearTransformation.")})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bundle))

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden, mask = xlmr(**batch)[0], batch["attention_mask"]
        return F.normalize(linear((hidden * mask.unsqueeze(2)).sum(1) / mask.sum(1)[:, None]), dim=-1)

    return encode


encode = load_plain(Path(os.environ["MODEL_DIR"]) / os.environ.get("MODEL_VARIANT", "english"))
app = Flask(__name__)


@app.post("/embed/text")
def embed_text():  # noqa: ANN201
    with torch.no_grad():
        vectors = encode(request.get_json()["texts"])
    return jsonify({"embeddings": vectors.tolist()})
