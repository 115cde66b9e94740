"""Bake real weights into bundles (image build time, with network).

    python -m models.bake --variant NAME|all --out DIR [--from-dir MIRROR] [--lock | --allow-unpinned]

For each variant: download the pinned files, check their sha256 against the registry, convert
the weights to safetensors through open_clip's own checkpoint loader (so every format and key
fix-up open_clip knows applies), check the result loads, export the towers to ONNX (checked
against torch; int8 copies where they keep fidelity, `models.onnx_export`; `--no-onnx` skips it),
and publish `DIR/<variant>/` atomically with the manifest written last. A variant whose bundle is already complete and
baked from the same pins is skipped, so running it twice is a no-op.

Downloads go through a `FileSource`: `HubSource` (huggingface_hub `hf_hub_download` at the
pinned revision, resolved to a commit; plain HTTPS for release URLs; both cached under
~/.cache so a Docker cache mount makes a re-bake download nothing) or `LocalDirSource` (a
mirror directory laid out as `<repo>/<filename>` and `<url file name>`: air-gapped builds, tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import models  # noqa: F401  (offline by default; HubSource turns the network back on)
from models import bundle, manifest, pins, registry
from models.registry import Source, Variant


class ChecksumMismatch(ValueError):
    """A downloaded file's sha256 is not the pinned one."""


class UnpinnedSource(ValueError):
    """A source is neither pinned in the registry nor locked, and neither `lock` nor `allow_unpinned` was given."""


class RevisionUnavailable(ValueError):
    """A pinned hub revision does not resolve (or resolves to another commit): the registry needs a fix."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    resolved: dict[str, str] = field(default_factory=dict)  # e.g. resolved_revision: the hub commit used


class FileSource(Protocol):
    def fetch(self, source: Source, dest_dir: Path) -> Fetched:
        """Put the file for `source` under `dest_dir` and return where it is."""


class LocalDirSource:
    """Files from a local mirror: `root/<repo>/<filename>` for hub files, `root/<filename>` for URLs."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def fetch(self, source: Source, dest_dir: Path) -> Fetched:
        path = self.root / source.repo / source.filename if source.repo else self.root / source.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} not in the local mirror {self.root}")
        return Fetched(path)


class HubSource:
    """The real downloads, cached so a re-bake (or a Docker build with a cache mount on ~/.cache)
    downloads nothing twice: hub files in huggingface_hub's own cache, release URLs in
    `cache_dir`. Re-enables network for huggingface_hub, which `models` switches off."""

    def __init__(self, cache_dir: Path | None = None, timeout_s: float = 60.0, endpoint: str | None = None,
                 hub_cache_dir: Path | None = None):
        self.endpoint = endpoint  # None: huggingface_hub's default (HF_ENDPOINT or the public hub)
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        self.cache_dir = cache_dir or cache_home / "clipserve" / "downloads"
        self.timeout_s = timeout_s
        self.hub_cache_dir = hub_cache_dir  # None: huggingface_hub's (HF_HUB_CACHE, ~/.cache/huggingface)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[name] = "0"
        import huggingface_hub.constants

        # huggingface_hub read the variable at import (offline, via `models`); its check reads this.
        huggingface_hub.constants.HF_HUB_OFFLINE = False

    def fetch(self, source: Source, dest_dir: Path) -> Fetched:
        return self._from_hub(source) if source.repo else self._from_url(source)

    def _from_hub(self, source: Source) -> Fetched:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        # Resolve a branch to its commit first, so the file and the recorded revision agree.
        url = hf_hub_url(source.repo, source.filename, revision=source.revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, timeout=self.timeout_s)
        except (RevisionNotFoundError, EntryNotFoundError) as exc:
            if not source.pinned_revision:
                raise
            raise RevisionUnavailable(
                f"{source.repo} {source.filename}: the pinned revision {source.revision} does not resolve on the "
                f"hub ({type(exc).__name__}); correct it in models/registry.py") from None
        revision = meta.commit_hash or source.revision
        if source.pinned_revision and revision != source.revision:
            raise RevisionUnavailable(f"{source.repo} {source.filename}: pinned revision {source.revision}, the hub "
                                      f"resolved it to {revision}; correct it in models/registry.py")
        path = hf_hub_download(source.repo, source.filename, revision=revision, etag_timeout=self.timeout_s,
                               endpoint=self.endpoint, cache_dir=self.hub_cache_dir)
        return Fetched(Path(path), {"resolved_revision": revision} if revision else {})

    def _from_url(self, source: Source) -> Fetched:
        import requests

        dest = self.cache_dir / source.filename
        if dest.is_file() and _matches_pins(dest, source):
            return Fetched(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")  # renamed only once complete
        with requests.get(source.url, stream=True, timeout=self.timeout_s) as response:
            response.raise_for_status()
            with open(partial, "wb") as f:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
        partial.replace(dest)
        return Fetched(dest)


def _matches_pins(path: Path, source: Source) -> bool:
    if source.sha256 is None and source.sha256_prefix is None:
        return True
    actual = bundle.sha256_file(path)
    return actual == (source.sha256 or actual) and actual.startswith(source.sha256_prefix or "")


def verify(source: Source, fetched: Fetched, allow_unpinned: bool) -> dict[str, Any]:
    """Check the file against its pins (the registry's, or the lock's: `pins.effective`); return the manifest's
    record of where it came from."""
    actual = bundle.sha256_file(fetched.path)
    where = f"{source.repo or source.url} {source.filename}"
    if source.sha256 is not None and actual != source.sha256:
        raise ChecksumMismatch(f"{where}: expected sha256 {source.sha256} (models/registry.py or "
                               f"models/pins.lock.json), the download has {actual}; nothing was baked. Correct the "
                               "pin if the published file changed.")
    if source.sha256_prefix is not None and not actual.startswith(source.sha256_prefix):
        raise ChecksumMismatch(f"{where}: sha256 {actual} does not start with {source.sha256_prefix} (its name's "
                               "checksum prefix); nothing was baked")
    if not source.pinned and not allow_unpinned:
        missing = "sha256" if source.sha256 is None else "revision"
        raise UnpinnedSource(f"{source.filename} ({source.repo or source.url}) has no pinned {missing} in "
                             f"models/registry.py and is not locked in models/pins.lock.json; its sha256 is {actual}. "
                             "On a machine with network, run `python -m models.bake --variant NAME --out DIR --lock` "
                             "once and commit models/pins.lock.json (or pin it in the registry).")
    return {**source.describe(), **fetched.resolved, "sha256_seen": actual}


def is_up_to_date(out: Path, variant: Variant, onnx: bool = True, lock: dict[str, Any] | None = None) -> bool:
    """A complete baked bundle exists whose recorded sources carry exactly the registry's pins (and, with
    `onnx`, its ONNX graphs)."""
    try:
        _, existing = bundle.check_bundle(out, variant.name)
    except (bundle.BundleError, ValueError, KeyError):
        return False
    if existing.get("origin") != "models.bake" or (onnx and not existing.get("onnx")):
        return False
    recorded = {_source_key(r): r for r in existing.get("sources", [])}
    for source in all_sources(variant, lock or {}):
        record = recorded.get(_source_key(source.describe()))
        if record is None or any(record.get(k) != v for k, v in source.describe().items()):
            return False
    return True


def _source_key(record: dict[str, Any]) -> tuple:
    return record.get("repo") or record.get("url"), record["filename"]


def all_sources(variant: Variant, lock: dict[str, Any] | None = None) -> list[Source]:
    """Every file the variant's bake downloads, with the lock's pins applied where the registry has none."""
    sources = [variant.clip.weights, *variant.tokenizer_files]
    if variant.text is not None:
        t = variant.text
        sources += [t.weights, t.config, t.base_config, *t.tokenizer_files]
    return [pins.effective(s, lock or {}) for s in sources]


def bake_variant(variant: Variant, out: Path | str, source: FileSource, *, allow_unpinned: bool = False,
                 onnx: bool = True, lock: bool = False, lock_file: Path | str = pins.LOCK_FILE) -> Path | None:
    """Bake one variant into `out/<variant>`. Returns the bundle path, or None if it was up to date.

    Files the registry does not pin are fetched as `lock_file` pins them. `lock`: a file pinned in neither is
    fetched as it is now and, once the whole bundle is baked, its resolved commit and sha256 are written to
    `lock_file` (the first bake of a new entry, on a networked machine)."""
    out = Path(out)
    locked = pins.load(lock_file)
    if is_up_to_date(out, variant, onnx, locked):
        return None
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{variant.name}.download-", dir=out) as tmp, \
            bundle.stage(out, variant.name) as staging:
        downloads = Path(tmp)
        records = []
        new_locks: dict[str, dict[str, Any]] = {}

        def fetch(src: Source, role: str) -> Path:
            wanted = pins.effective(src, locked)
            fetched = source.fetch(wanted, downloads)
            record = verify(wanted, fetched, allow_unpinned or lock)
            if pins.is_locked(src, locked):
                record["locked"] = True
            elif not wanted.pinned and lock:
                entry = {"revision": fetched.resolved.get("resolved_revision") if src.repo else None,
                         "sha256": record["sha256_seen"], "size": fetched.path.stat().st_size}
                new_locks[pins.key(src)] = entry
                # recorded as the lock will pin it, so the next bake finds this bundle up to date
                record.update(pins.effective(src, {pins.key(src): entry}).describe(), locked=True)
            records.append({"role": role, **record})
            return fetched.path

        clip_config = _bake_clip(variant, fetch(variant.clip.weights, "open_clip weights"), staging)
        tokenizer = None
        if variant.tokenizer_files:
            for src in variant.tokenizer_files:
                shutil.copyfile(fetch(src, "tokenizer"), staging / src.filename)
            tokenizer = manifest.hf_tokenizer_section(staging, clip_config)
        mclip = None if variant.text is None else _bake_mclip(variant, fetch, staging)
        spec = manifest.build_manifest(variant, clip_config, origin="models.bake", sources=records, mclip=mclip,
                                       hf_tokenizer=tokenizer)
        _check_loadable(staging, spec)
        spec = manifest.add_bf16_copies(staging, spec)
        if onnx:  # checked against the torch towers before anything is published; int8 only if it keeps fidelity
            from models import onnx_export

            spec = onnx_export.export_bundle(staging, spec, int8=True)
        published = bundle.publish(staging, out, spec)
    if new_locks:
        pins.record(new_locks, lock_file)
    return published


def _bake_clip(variant: Variant, weights: Path, staging: Path) -> dict[str, Any]:
    """Load through open_clip's reference path, save what the bundle needs as safetensors.

    The config is open_clip's for the architecture with the tag's `quick_gelu` merged in
    (`manifest.clip_config_for`): `create_model(arch, pretrained=<file>)` alone ignores the tag,
    so it gets the same via `force_quick_gelu` (the only field the merge can change).
    """
    import open_clip

    config = manifest.clip_config_for(variant.clip)
    model = open_clip.create_model(variant.clip.arch, pretrained=str(weights), load_weights=True,
                                   force_quick_gelu=bool(config.get("quick_gelu", False)))
    state = manifest.clip_state_to_save(model, image_only=variant.text is not None)
    manifest.save_safetensors(state, staging / manifest.clip_weights_name(variant))
    return config


def _bake_mclip(variant: Variant, fetch, staging: Path) -> dict[str, Any]:
    import transformers

    text = variant.text
    weights = _torch_load(fetch(text.weights, "M-CLIP weights"))
    manifest.save_safetensors(weights, staging / manifest.MCLIP_WEIGHTS)
    del weights
    mclip_config = json.loads(fetch(text.config, "M-CLIP config").read_text())
    base_config = json.loads(fetch(text.base_config, "XLM-R config").read_text())
    for src in text.tokenizer_files:
        shutil.copyfile(fetch(src, "tokenizer"), staging / src.filename)
    # config= spares AutoTokenizer a look for config.json (the bundle has none) to pick the class
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(staging), config=transformers.AutoConfig.for_model(**base_config), local_files_only=True)
    return {"config": mclip_config, "base_config": base_config, "tokenizer_class": type(tokenizer).__name__}


def _torch_load(path: Path) -> dict[str, Any]:
    """A pickled state dict, tensors only (`weights_only`); mmap where the file format allows it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-zip) serialization cannot be mmapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _check_loadable(staging: Path, spec: dict[str, Any]) -> None:
    """The staged weights fit the manifest's architectures exactly (the loader's own code path)."""
    from models import mclip_tower, openclip_tower

    clip = spec["clip"]
    openclip_tower.load_model(clip["config"], staging / clip["weights"], with_text=spec["text"]["type"] == "open_clip")
    if spec["text"]["type"] == "mclip":
        text = spec["text"]
        mclip_tower.load_model(text["base_config"], text["config"], staging / text["weights"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, choices=[*registry.names(), "all"])
    parser.add_argument("--out", required=True, type=Path, help="MODEL_DIR; bundles go to OUT/<variant>")
    parser.add_argument("--from-dir", type=Path, help="bake from a local mirror instead of the network")
    pinning = parser.add_mutually_exclusive_group()
    pinning.add_argument("--lock", action="store_true",
                         help="fetch files neither pinned nor locked as they are now, and record their commit and "
                              "sha256 in models/pins.lock.json (commit it): later bakes verify against it")
    pinning.add_argument("--allow-unpinned", action="store_true",
                         help="accept files without a pin or a lock entry (recorded in the manifest only)")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="no ONNX graphs (torch runtime only; the bundle is about half the size)")
    args = parser.parse_args(argv)
    source: FileSource = LocalDirSource(args.from_dir) if args.from_dir else HubSource()
    for name in registry.names() if args.variant == "all" else [args.variant]:
        path = bake_variant(registry.get(name), args.out, source, allow_unpinned=args.allow_unpinned, onnx=args.onnx,
                            lock=args.lock)
        if path is None:
            print(f"{args.out / name}: up to date")
            continue
        print(f"wrote {path}")
        for record in json.loads((path / bundle.MANIFEST).read_text())["sources"]:
            print(f"  {record['role']}: {record.get('repo') or record.get('url')} {record['filename']} "
                  f"revision={record.get('resolved_revision', record.get('revision', '-'))} "
                  f"sha256={record['sha256_seen']}{' (locked)' if record.get('locked') else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
