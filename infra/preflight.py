"""Container entrypoint: check the configuration and the baked model, then exec the real command.

    ENTRYPOINT ["python", "-m", "infra.preflight"]   CMD ["gunicorn", "-c", "infra/gunicorn.conf.py", ...]

Why: the model loads in a background thread after gunicorn starts, so a container asked for a
variant that was not baked would otherwise keep running with /health at 503 until the platform
gives up (up to 240 s on Cloud Run) with the reason buried in the logs. Here it exits at once,
saying which variants the image does hold; likewise for a search index (INDEX_DIR) that is missing,
incomplete or built with another model. The checks read only manifests and file sizes
(milliseconds, no torch). The Lambda entry (infra/lambda_handler.py) runs the same check at init.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from infra.settings import Settings, SettingsError

EX_CONFIG = 78  # sysexits.h: configuration error


class VariantNotBaked(RuntimeError):
    """MODEL_VARIANT has no complete bundle under MODEL_DIR; the message lists what is there."""


def baked_variants(model_dir: Path) -> list[str]:
    """Variants with a manifest under model_dir (what `models.bake` wrote into the image)."""
    if not model_dir.is_dir():
        return []
    return sorted(p.parent.name for p in model_dir.glob("*/manifest.json"))


def check_model_baked(settings: Settings) -> None:
    """Raise VariantNotBaked unless every served variant (MODELS, or MODEL_VARIANT) is a complete bundle."""
    from models.bundle import BundleError, check_bundle

    setting = "MODELS" if settings.models is not None else "MODEL_VARIANT"
    for variant in settings.served_models:
        try:
            check_bundle(settings.model_dir, variant)
        except BundleError as exc:
            baked = baked_variants(settings.model_dir)
            held = ", ".join(baked) if baked else "no variant at all"
            what = (f"MODEL_VARIANT={variant} is" if setting == "MODEL_VARIANT"
                    else f"MODELS={settings.models} names {variant}, which is")
            raise VariantNotBaked(
                f"{what} not baked into this image: MODEL_DIR={settings.model_dir} holds {held}. Serve those, or "
                f"rebuild the image with --build-arg MODEL_VARIANTS=\"{' '.join(settings.served_models)}\" "
                f"({exc})") from exc


def check_search_index(settings: Settings) -> None:
    """Raise IndexUnusable if INDEX_DIR is set and is not a complete index built with the served model."""
    if settings.index_dir is None:
        return
    from models.bundle import served_identities
    from search.configure import check_index_dir

    check_index_dir(settings.index_dir, served_identities(settings.model_dir, settings.served_models))


def main(argv: list[str]) -> int:
    """Check, then replace this process with argv (so signals reach gunicorn directly)."""
    from models.device import DeviceUnavailable, require_requested_gpu
    from search.errors import IndexUnusable

    try:
        settings = Settings.from_env()
        check_model_baked(settings)
        check_search_index(settings)
        require_requested_gpu(settings.device, settings.image_decode)
    except (SettingsError, VariantNotBaked, IndexUnusable, DeviceUnavailable) as exc:
        print(f"clipserve: cannot start: {exc}", file=sys.stderr, flush=True)
        return EX_CONFIG
    if not argv:
        print("clipserve: preflight passed; no command to run", file=sys.stderr)
        return 0
    os.execvp(argv[0], argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
