"""Bundles with random weights, offline, in exactly the baked layout.

    python -m models.tiny --variant english|multilingual|all --out DIR [--size tiny|real] [--seed N]

`tiny`: the real architecture families shrunk to a few MB (tests; loads in ~0.1 s).
`real`: the real architectures at full size (benchmarks: speed does not depend on weight values).
Deterministic for a given seed. The multilingual text tokenizer is a small Unigram vocabulary
built here (the real 250k SentencePiece model cannot be made offline); the real-size XLM-R still
has its full 250,002-row embedding, so load time and memory are those of the real model. SigLIP's
Gemma tokenizer is stood in for the same way: a small byte-fallback BPE in Gemma's layout (pad 0, eos 1,
bos 2, unk 3, "▁" for spaces, an EOS after each text), with the real 256,000-row embedding at `real`
size; the tiny SigLIP image tower is the real timm entrypoint at width 32 (models.tiny_timm).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import models  # noqa: F401  (offline env vars first)
from models import bundle, manifest, registry
from models.registry import Variant

# xlm-roberta-large's config.json (FacebookAI/xlm-roberta-large), the values that shape the model.
XLMR_LARGE_CONFIG: dict[str, Any] = {
    "model_type": "xlm-roberta", "architectures": ["XLMRobertaForMaskedLM"],
    "vocab_size": 250002, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
    "intermediate_size": 4096, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
    "initializer_range": 0.02, "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "position_embedding_type": "absolute",
}
TINY_WIDTH = 32
TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "house", "tree", "red", "blue", "green",
              "on", "in", "and", "with", "man", "woman", "street", "night")


def shrink_clip_config(config: dict[str, Any]) -> dict[str, Any]:
    """Same family, image size, patch size, vocabulary and context; 2 layers of width 32."""
    from models import tiny_timm

    cfg = copy.deepcopy(config)
    cfg["embed_dim"] = TINY_WIDTH
    vision = cfg["vision_cfg"]
    if "timm_model_name" in vision:  # open_clip passes no sizes to timm: a tiny timm model of the same family
        vision["timm_model_name"] = tiny_timm.tiny_name(vision["timm_model_name"])
    else:
        vision.update(width=TINY_WIDTH, layers=2, head_width=16, mlp_ratio=2.0)
    cfg["text_cfg"].update(width=TINY_WIDTH, heads=2, layers=2)
    return cfg


def tiny_gemma_tokenizer(vocab_size: int | None = None, seed: int = 0):
    """A byte-fallback BPE laid out like Gemma's tokenizer as SigLIP 2 uses it: a few words and every ASCII letter
    and digit as pieces, any other character as its UTF-8 bytes, an EOS appended to each text. `vocab_size`: fill
    the vocabulary with random merges up to that size (256,000 at real size, so the tokenizer file loads like the
    real 34 MB one does)."""
    import random

    from tokenizers import Tokenizer, decoders, models as tokenizer_models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"<0x{b:02X}>": 4 + b for b in range(256)})
    merges: list[tuple[str, str]] = []
    for piece in ["\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789", "猫", "犬"]:
        vocab.setdefault(piece, len(vocab))
    for word in ("\u2581" + w for w in TINY_WORDS + ("cats", "dogs", "photos", "snow", "paris")):
        for k in range(2, len(word) + 1):
            if word[:k] not in vocab:
                vocab[word[:k]] = len(vocab)
                merges.append((word[:k - 1], word[k - 1]))
    rng = random.Random(seed)
    pieces = [p for p in vocab if not p.startswith("<")]
    while vocab_size is not None and len(vocab) < vocab_size:
        left, right = rng.choice(pieces), pieces[rng.randrange(len(pieces) // 4 + 40)]
        if left + right not in vocab and "\u2581" not in right:
            vocab[left + right] = len(vocab)
            merges.append((left, right))
            pieces.append(left + right)
    tokenizer = Tokenizer(tokenizer_models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                               fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def tiny_tokenizer():
    """An XLM-R (Unigram) tokenizer over a few words plus single letters, so any text tokenizes."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -5.0) for w in TINY_WORDS]
    vocab += [("\u2581", -6.0)] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)


def tiny_xlmr_config(vocab_size: int) -> dict[str, Any]:
    return dict(XLMR_LARGE_CONFIG, vocab_size=vocab_size, hidden_size=TINY_WIDTH, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=2 * TINY_WIDTH)


def random_clip(config: dict[str, Any]):
    """An open_clip model with open_clip's own random initialisation."""
    import torch

    from models.openclip_tower import model_class_and_kwargs

    cls, kwargs = model_class_and_kwargs(config)
    model = cls(**kwargs).eval()
    if getattr(model, "logit_bias", None) is not None:  # SigLIP: open_clip's init (-10) is one value; any will do
        with torch.no_grad():
            model.logit_bias.normal_(-10.0, 1.0)
    return model


def random_mclip_state(base_config: dict[str, Any], out_dim: int):
    """State dict shaped like M-CLIP's checkpoint, pooler included (as upstream ships it)."""
    import torch
    import transformers

    base = transformers.AutoConfig.for_model(**base_config)
    transformer = transformers.AutoModel.from_config(base)  # with pooler, like the upstream file
    linear = torch.nn.Linear(base.hidden_size, out_dim)
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state.update({f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()})
    return state


def make_bundle(variant_name: str, out: Path, size: str = "tiny", seed: int = 0, onnx: bool = True) -> Path:
    """Write `out/<variant>` with random weights; returns the bundle directory. `onnx`: export the towers to
    ONNX (+ int8), as bake does (about 10 s per tiny variant, minutes at real size)."""
    import torch

    variant = registry.get(variant_name)
    torch.manual_seed(seed)
    clip_config = manifest.clip_config_for(variant.clip)  # as bake: the tag's quick_gelu merged in
    if size == "tiny":
        clip_config = shrink_clip_config(clip_config)
    origin = f"models.tiny size={size} seed={seed} (random weights)"
    with bundle.stage(out, variant.name) as staging:
        hf_tokenizer = None
        if variant.tokenizer_files:
            tokenizer = tiny_gemma_tokenizer(None if size == "tiny" else clip_config["text_cfg"]["vocab_size"], seed)
            tokenizer.save_pretrained(str(staging))
            if size == "tiny":
                clip_config["text_cfg"]["vocab_size"] = len(tokenizer)
            hf_tokenizer = manifest.hf_tokenizer_section(staging, clip_config)
        model = random_clip(clip_config)
        state = manifest.clip_state_to_save(model, image_only=variant.text is not None)
        manifest.save_safetensors(state, staging / manifest.clip_weights_name(variant))
        del model, state
        mclip = None if variant.text is None else _write_random_mclip(variant, clip_config, size, staging)
        spec = manifest.add_bf16_copies(staging, manifest.build_manifest(variant, clip_config, origin=origin,
                                                                          sources=[], mclip=mclip,
                                                                          hf_tokenizer=hf_tokenizer))
        if onnx:
            from models import onnx_export

            spec = onnx_export.export_bundle(staging, spec, int8=True)
        return bundle.publish(staging, out, spec)


def _write_random_mclip(variant: Variant, clip_config: dict[str, Any], size: str, staging: Path) -> dict[str, Any]:
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(str(staging))
    base_config = tiny_xlmr_config(len(tokenizer)) if size == "tiny" else dict(XLMR_LARGE_CONFIG)
    dim = clip_config["embed_dim"]
    # the names M-CLIP's saved config.json uses (its config class also takes transformerDimSize/imageDimSize)
    mclip_config = {"model_type": "M-CLIP", "modelBase": "xlm-roberta-large",
                    "transformerDimensions": base_config["hidden_size"], "numDims": dim}
    manifest.save_safetensors(random_mclip_state(base_config, dim), staging / manifest.MCLIP_WEIGHTS)
    return {"config": mclip_config, "base_config": base_config, "tokenizer_class": type(tokenizer).__name__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, choices=[*registry.names(), "all"])
    parser.add_argument("--out", required=True, type=Path, help="MODEL_DIR; the bundle goes to OUT/<variant>")
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="no ONNX graphs (torch runtime only)")
    args = parser.parse_args(argv)
    for name in registry.names() if args.variant == "all" else [args.variant]:
        path = make_bundle(name, args.out, args.size, args.seed, onnx=args.onnx)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
