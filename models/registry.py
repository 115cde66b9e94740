"""The variants this service can serve, as data.

A variant is an OpenCLIP model (its image tower, and its text tower unless `text` says
otherwise) plus optionally a separate text tower (M-CLIP). Every file a bake downloads is a
pinned `Source`. Adding another open_clip architecture/tag is one more `register(...)` call
below: the loader reads everything it needs from the bundle's manifest, never from here.

Pins: a file is pinned when its bytes are fixed, by a full sha256 or, for a hub file, by a
full 40-hex commit (a commit fixes every file in it; bake records such a file's sha256 in the
manifest). Where the publisher gives neither (the SigLIP 2 repos), the file is *locked* instead:
the first bake on a networked machine with `--lock` records the commit it resolved and the sha256
it got into `models/pins.lock.json` (committed), and every later bake, `serve.sh` and the Docker
build verify against that (`models.pins`). `models.bake` refuses a file that is neither pinned nor
locked unless `--lock` or `--allow-unpinned` is given, and stops, naming the file, when a pinned
revision does not resolve or a sha256 differs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Literal

# open_clip's own constants (open_clip/constants.py), repeated so the registry imports no torch.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


SHA256 = re.compile(r"[0-9a-f]{64}")
COMMIT = re.compile(r"[0-9a-f]{40}")


class UnknownVariant(KeyError):
    """Raised for a variant name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    """One pinned file: on the Hugging Face Hub (`repo` + `revision`) or at a plain HTTPS `url`."""

    filename: str
    repo: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    # open_clip's GitHub release names carry the first 8 hex digits of the file's sha256.
    sha256_prefix: str | None = None

    def __post_init__(self) -> None:
        if (self.repo is None) == (self.url is None):
            raise ValueError(f"Source {self.filename!r}: give exactly one of repo or url")
        if self.sha256 is not None and not SHA256.fullmatch(self.sha256):
            raise ValueError(f"Source {self.filename!r}: sha256 must be 64 lowercase hex digits")
        if self.revision is not None and self.url is not None:
            raise ValueError(f"Source {self.filename!r}: a revision only applies to hub files")

    @property
    def pinned_revision(self) -> bool:
        """A hub file at a full commit hash (a branch or tag name can move; a short hash can be ambiguous)."""
        return self.repo is not None and self.revision is not None and bool(COMMIT.fullmatch(self.revision))

    @property
    def pinned(self) -> bool:
        """True when the bytes are fixed: a full sha256, or a hub file at a full commit."""
        return self.sha256 is not None or self.pinned_revision

    def describe(self) -> dict:
        """JSON-ready record for the manifest's `sources`."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class OpenClipModel:
    """An open_clip architecture + pretrained weights, with the preprocessing those weights need.

    `arch` is an open_clip config name (`open_clip.list_models()`); bake and tiny copy its full
    config into the manifest, so the loader never needs open_clip's registry.

    Where open_clip knows the tag for `arch` (`open_clip.get_pretrained_cfg(arch, tag)`), bake and
    tiny take what that says: `quick_gelu` goes into the model config (so `ViT-L-14` + `openai`
    gets QuickGELU, which open_clip itself does not do for a `pretrained=<file>`), and mean, std,
    interpolation and resize_mode into the manifest's preprocessing (see
    `models.manifest.preprocess_for`). Leave the preprocessing fields None to take those; a value
    given here that differs from open_clip's is refused (`manifest.PretrainedConflict`). For a tag
    open_clip does not know, the values given here apply, and None means open_clip's defaults
    (OpenAI mean/std, bicubic, shortest side).
    """

    arch: str
    pretrained_tag: str
    weights: Source
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bicubic", "bilinear"] | None = None
    resize_mode: Literal["shortest", "longest", "squash"] | None = None


@dataclass(frozen=True)
class MClipText:
    """An M-CLIP text tower: an XLM-R encoder, mean pooling, a linear map into CLIP space."""

    repo: str
    weights: Source  # pytorch_model.bin; converted to safetensors at bake time
    config: Source  # M-CLIP's config.json (XLM-R width and output dim)
    # tokenizer.json, not sentencepiece.bpe.model: the latter alone would need protobuf to convert.
    tokenizer_files: tuple[Source, ...]
    base_config: Source  # the XLM-R config.json: do not trust XLMRobertaConfig() defaults
    max_length: int = 512


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    clip: OpenClipModel
    text: MClipText | None = None  # None: the OpenCLIP model's own text tower
    license: str = ""  # the weights' license, as their publisher states it (served in GET / and the manifest)
    # A Hugging Face tokenizer the open_clip text tower uses (SigLIP's Gemma tokenizer): baked beside the weights,
    # since open_clip.get_tokenizer would fetch it from the hub. Empty: open_clip's own BPE, which ships in its wheel.
    tokenizer_files: tuple[Source, ...] = ()
    notes: tuple[str, ...] = field(default=())


def openclip_from_hub(arch: str, tag: str, repo: str, filename: str = "open_clip_model.safetensors",
                      revision: str | None = None, sha256: str | None = None, **preprocess) -> OpenClipModel:
    """OpenCLIP weights from a hub repo (open_clip's `hf_hub` route); preprocessing as `OpenClipModel` says."""
    return OpenClipModel(arch, tag, Source(filename, repo=repo, revision=revision, sha256=sha256), **preprocess)


def openclip_from_url(arch: str, tag: str, url: str, sha256: str | None = None, **preprocess) -> OpenClipModel:
    """OpenCLIP weights from a release URL; an 8-hex suffix in the file name is taken as a sha256 prefix."""
    filename = url.rsplit("/", 1)[-1]
    stem = filename.rsplit(".", 1)[0].rsplit("-", 1)[-1]
    prefix = stem if len(stem) == 8 and all(c in "0123456789abcdef" for c in stem) else None
    return OpenClipModel(arch, tag, Source(filename, url=url, sha256=sha256, sha256_prefix=prefix), **preprocess)


def hub_file(repo: str, filename: str, revision: str | None = None, sha256: str | None = None) -> Source:
    return Source(filename, repo=repo, revision=revision, sha256=sha256)


_VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in _VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def names() -> list[str]:
    return sorted(_VARIANTS)


def get(name: str) -> Variant:
    """The registered variant (a copy, so callers cannot change the registry)."""
    try:
        return copy.deepcopy(_VARIANTS[name])
    except KeyError:
        raise UnknownVariant(f"unknown model variant {name!r}; available: {', '.join(names())}") from None


# --- The variants -------------------------------------------------------------------------------

# Published pins (issue 12). sha256 values are the files' LFS object ids on the Hugging Face Hub, or for
# the release file its LFS pointer in a public mirror of open_clip's weights (its name's 699c4b84 agrees).
ENGLISH_SHA256 = "25802f2bca7543373c773621aa896b4f0e3d0de95bf3f222e66e06afab6d6c67"  # 605 MB
# The english repo's commit is published only as the short 8604507 ("Add model"): the sha256 pins it.
B16PLUS_E32_SHA256 = "699c4b843885d82733517f36f0911d7e1b360bcc1314dda81d8c56c76fe9524d"  # 833,559,975 bytes
MCLIP_REPO = "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus"
# Its newest commit (README only); the JSON and tokenizer files came in 8a504740, the weights in 323f4a4c.
MCLIP_REVISION = "e0035edeb83948e336724b7db6bd2c70c9750cf0"
MCLIP_WEIGHTS_SHA256 = "a7124266439dd6bce544c23b57249a2ca764dbcd38e8eab16ce272c28c27b049"  # 2.24 GB
XLMR_REPO = "FacebookAI/xlm-roberta-large"
# Seen as the snapshot folder name in public code that caches the repo: less certain than the pins above.
# If the hub does not know it, bake stops naming this file and revision (never an unpinned download).
XLMR_REVISION = "c23d21b0620b635a76227c604d44e43a9f0ee389"

# The weights' licenses: OpenCLIP's model cards (laion400m weights: MIT, as the open_clip repository), M-CLIP's
# repository (MIT; XLM-R: MIT), SigLIP 2's model cards and big_vision (Apache-2.0).
MIT, APACHE_2 = "MIT", "Apache-2.0"

register(Variant(
    name="english",
    license=MIT,
    description="OpenCLIP ViT-B-32 (QuickGELU), laion400m_e32; 512-d, 224 px, 77 tokens",
    # QuickGELU: laion400m_e32 B-32 was trained with it. The -quickgelu name says so outright (bake and
    # tiny would also take it from open_clip's cfg for the tag, but the name is what open_clip documents).
    clip=openclip_from_hub("ViT-B-32-quickgelu", "laion400m_e32",
                           repo="timm/vit_base_patch32_clip_224.laion400m_e32", sha256=ENGLISH_SHA256),
))

register(Variant(
    name="multilingual",
    license=MIT,
    description="M-CLIP XLM-Roberta-Large-Vit-B-16Plus text + OpenCLIP ViT-B-16-plus-240 laion400m_e32 image; 640-d",
    # The hub's ViT-B-16-plus-240 repo holds e31, not e32: the e32 file is the GitHub release.
    clip=openclip_from_url(
        "ViT-B-16-plus-240", "laion400m_e32",
        url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
            "vit_b_16_plus_240-laion400m_e32-699c4b84.pt", sha256=B16PLUS_E32_SHA256),
    text=MClipText(
        repo=MCLIP_REPO,
        weights=hub_file(MCLIP_REPO, "pytorch_model.bin", MCLIP_REVISION, sha256=MCLIP_WEIGHTS_SHA256),
        config=hub_file(MCLIP_REPO, "config.json", MCLIP_REVISION),
        tokenizer_files=tuple(hub_file(MCLIP_REPO, f, MCLIP_REVISION) for f in (
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")),
        base_config=hub_file(XLMR_REPO, "config.json", XLMR_REVISION),
    ),
    notes=("image tower: only visual.* and logit_scale are kept from the full CLIP checkpoint",),
))


# SigLIP 2 (big_vision, converted by timm for open_clip): one hub repo per size holds the open_clip weights and the
# Gemma tokenizer. No sha256 or full commit is published for them, so they are locked (models/pins.lock.json), not
# pinned here. open_clip's pretrained cfg for (arch, "webli") gives their preprocessing: squash resize, mean = std =
# 0.5, bicubic (models.manifest.preprocess_for reads it; nothing is repeated here).
SIGLIP2_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def siglip2(name: str, arch: str, description: str) -> Variant:
    repo = f"timm/{arch}"
    return Variant(
        name=name, description=description, license=APACHE_2,
        clip=openclip_from_hub(arch, "webli", repo=repo),
        tokenizer_files=tuple(hub_file(repo, f) for f in SIGLIP2_TOKENIZER),
        notes=("text: Gemma tokenizer (256k), canonicalized text, 64 tokens padded; scores are sigmoid probabilities",))


register(siglip2("siglip2-b32", "ViT-B-32-SigLIP2-256",
                 "SigLIP 2 ViT-B-32, 256 px (webli); 768-d, multilingual Gemma tokenizer, 64 tokens"))
register(siglip2("siglip2-b16", "ViT-B-16-SigLIP2-256",
                 "SigLIP 2 ViT-B-16, 256 px (webli); 768-d, multilingual Gemma tokenizer, 64 tokens"))
register(siglip2("siglip2-so400m", "ViT-SO400M-16-SigLIP2-384",
                 "SigLIP 2 ViT-SO400M-16, 384 px (webli); 1152-d, multilingual Gemma tokenizer, 64 tokens (GPU tier)"))
