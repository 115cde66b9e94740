"""The model layer: variant registry, bundles (bake / tiny), and loading an `Encoder`.

Importing this package switches the Hugging Face libraries to offline mode *before* any of
them is imported: huggingface_hub reads `HF_HUB_OFFLINE` at import time, and set later an
offline load retries for ~46 s before failing. The service never downloads at run time, so
the values are forced, not defaulted. `models.bake` (the one module meant to reach the
network, at image build time) switches them back before it imports huggingface_hub.
"""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Request threads call tokenizers; its fork-parallelism warning is noise under gunicorn.
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE_ENV)
# Download progress bars (a bake at image build time) say nothing a person must act on; bake prints what it fetched.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
