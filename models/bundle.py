"""Bundle on disk: `MODEL_DIR/<variant>/manifest.json` beside the weight and tokenizer files.

The manifest is the bundle's whole description (architecture configs, preprocessing, files
with sha256 and size, sources), so the loader needs nothing else, and the manifest is always
written last: a bundle without one is not a bundle. `stage()` + `publish()` write a bundle
atomically, so a failed bake never leaves something that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class BundleError(FileNotFoundError):
    """A bundle is missing, incomplete or for another variant. The message says how to make one."""


def bake_hint(variant: str, model_dir: Path | str) -> str:
    return (f"Bake it with `python -m models.bake --variant {variant} --out {model_dir}` "
            f"(needs network), or for tests `python -m models.tiny --variant {variant} --out {model_dir}`.")


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def weights_fingerprint(manifest: dict[str, Any]) -> str:
    """One value naming the weights a bundle serves: the sha256 of its fp32 weight files' sha256s.

    Search indexes record it, so a service never answers queries against vectors another model
    made. Derived files (bf16 copies) and tokenizer files do not enter it.
    """
    names = sorted(section["weights"] for section in (manifest["clip"], manifest["text"]) if section.get("weights"))
    joined = ";".join(f"{name}={manifest['files'][name]['sha256']}" for name in names)
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


def model_identity(model_dir: Path | str, variant: str) -> dict[str, Any]:
    """What a search index must have been built with to be served with this bundle: variant,
    architecture, dim and weights fingerprint, from the manifest alone (milliseconds, no torch)."""
    _, manifest = check_bundle(model_dir, variant)
    return {"variant": manifest["variant"], "architecture": manifest["architecture"], "dim": int(manifest["dim"]),
            "weights": weights_fingerprint(manifest)}


def served_identities(model_dir: Path | str, variants: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`model_identity` of each variant, in order (a search index must have been built with one of them)."""
    return {variant: model_identity(model_dir, variant) for variant in variants}


def prefetch(paths: list[Path]) -> None:
    """Ask the kernel to start reading the files now (on a cold container they come from the image store),
    so the reads overlap the imports (seconds of CPU) instead of following them. Best effort, returns at once.
    Not measurable on the dev VM, where the files sit in the page cache."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # check_bundle reports missing files; nothing to prefetch
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except (AttributeError, OSError):
            pass  # not Linux
        finally:
            os.close(fd)


def read_manifest(bundle_dir: Path | str) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT_VERSION:
        raise BundleError(f"{path}: manifest format {manifest.get('format')!r}, this code reads {FORMAT_VERSION}")
    return manifest


def check_bundle(model_dir: Path | str, variant: str) -> tuple[Path, dict[str, Any]]:
    """Return (bundle dir, manifest) if `model_dir/variant` is complete; else raise `BundleError`.

    Checks presence and size of every listed file (cheap, no hashing: `verify_bundle` hashes).
    """
    bundle_dir = Path(model_dir) / variant
    hint = bake_hint(variant, model_dir)
    if not (bundle_dir / MANIFEST).is_file():
        what = "has no manifest.json (bake unfinished?)" if bundle_dir.is_dir() else "does not exist"
        raise BundleError(f"model bundle {bundle_dir} {what}: missing {bundle_dir / MANIFEST}. {hint}")
    manifest = read_manifest(bundle_dir)
    if manifest.get("variant") != variant:
        raise BundleError(f"{bundle_dir / MANIFEST} is for variant {manifest.get('variant')!r}, not {variant!r}. {hint}")
    for name, record in manifest["files"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"model bundle {bundle_dir} is incomplete: missing {path}. {hint}")
        if path.stat().st_size != record["size"]:
            raise BundleError(f"model bundle {bundle_dir} is incomplete: {path} has {path.stat().st_size} bytes, "
                              f"manifest says {record['size']}. {hint}")
    return bundle_dir, manifest


def verify_bundle(model_dir: Path | str, variant: str) -> dict[str, Any]:
    """`check_bundle` plus a sha256 of every file (seconds per GB: for bake and CI, not for boot)."""
    bundle_dir, manifest = check_bundle(model_dir, variant)
    for name, record in manifest["files"].items():
        actual = sha256_file(bundle_dir / name)
        if actual != record["sha256"]:
            raise BundleError(f"{bundle_dir / name}: sha256 {actual} does not match the manifest's "
                              f"{record['sha256']}. {bake_hint(variant, model_dir)}")
    return manifest


@contextlib.contextmanager
def stage(model_dir: Path | str, variant: str) -> Iterator[Path]:
    """A fresh staging directory next to the final one (same filesystem, so the rename is atomic).

    Removed on exit unless `publish` moved it into place.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}.staging-", dir=model_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, model_dir: Path | str, manifest: dict[str, Any]) -> Path:
    """Hash the staged files into the manifest, write it last, and rename the bundle into place.

    `manifest["files"]` is filled from what is in `staging` (every file, so nothing unlisted ships).
    An existing bundle of the same variant is replaced only after the new one is complete.
    """
    manifest = dict(manifest, format=FORMAT_VERSION)
    manifest["files"] = {p.name: file_record(p) for p in sorted(staging.iterdir())
                         if p.is_file() and p.name != MANIFEST}
    _write_json_durably(staging / MANIFEST, manifest)
    _make_world_readable(staging)  # baked as root, served by an unprivileged user
    final = Path(model_dir) / manifest["variant"]
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(final.parent)
    return final


def _write_json_durably(path: Path, data: dict[str, Any]) -> None:
    for entry in path.parent.iterdir():  # every weight file on disk before the manifest names it
        if entry.is_file():
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _make_world_readable(bundle_dir: Path) -> None:
    bundle_dir.chmod(0o755)
    for entry in bundle_dir.iterdir():
        entry.chmod(0o755 if entry.is_dir() else 0o644)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: its entries are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
