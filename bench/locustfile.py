"""Load-test a clipserve deployment with Locust: the workloads that matter, as users of a search app send them.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080                       # web UI on http://localhost:8089
    locust -f bench/locustfile.py --host "$URL" --headless -u 16 -r 4 -t 2m --csv out/run    # CI, no UI
    locust -f bench/locustfile.py --host "$URL" --headless -u 8 -t 1m OneText          # one workload alone

Users (pick in the web UI's class picker, or name them after the options; all of them by default):
  SearchApp     a search app's mix: text searches, one-text embeds, image uploads and base64, searches by image,
                a text batch now and then (weights below)
  OneText       one text per request (POST /embed/text): the interactive case
  TextBatch     32 texts per request (a batch job's shape)
  ImageUpload   one 640x480 JPEG per request, multipart (POST /embed/image -F images=@...)
  ImageBase64   the same JPEG as base64 in JSON
  SearchText    POST /search by text (needs an index: INDEX_DIR or Qdrant; skipped, not failed, without one)

Options, from the environment (Locust's own flags stay as they are):
  CLIPSERVE_API_KEY=KEY           sent as Authorization: Bearer (API_KEYS)
  CLIPSERVE_GOOGLE_ID_TOKEN=1     a Google ID token for the host from the ambient credentials (private Cloud Run)
  CLIPSERVE_AWS_SIGV4=REGION      AWS SigV4 signatures (a Lambda function URL with IAM auth; botocore)
  CLIPSERVE_MODEL=NAME            the model every request names (a deployment serving several; default: its default)
Every answer is checked (status 200, the right number of vectors or a results list); a 429 or 503 counts as a
failure, which is what a load test should show. Texts are distinct (the service's text cache would otherwise
answer most of them); images cycle through 16 photo-like JPEGs.
"""

from __future__ import annotations

import base64
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from locust import HttpUser, between

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import photo_jpeg, prompts  # noqa: E402

_IMAGES = [photo_jpeg(seed) for seed in range(16)]
_TEXTS = prompts(5000)


def _with_headers(request: Any, headers: dict[str, str]) -> Any:
    """A requests auth hook: the client's credentials (clipserve_client.auth) on Locust's requests."""
    request.headers.update(headers)
    return request


class _Clipserve(HttpUser):
    """What every user shares: credentials, the model, distinct texts, checked answers."""

    abstract = True
    wait_time = between(0.0, 0.2)

    def on_start(self) -> None:
        self._texts = itertools.cycle(_TEXTS[hash(id(self)) % len(_TEXTS):] + _TEXTS)
        self._images = itertools.cycle(_IMAGES)
        self.model = os.environ.get("CLIPSERVE_MODEL")
        key = os.environ.get("CLIPSERVE_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        if os.environ.get("CLIPSERVE_GOOGLE_ID_TOKEN"):
            from clipserve_client.auth import GoogleIdToken

            token, audience = GoogleIdToken(), self.host.rstrip("/")
            self.client.auth = lambda r: _with_headers(r, {"Authorization": f"Bearer {token.token(audience)}"})
        elif os.environ.get("CLIPSERVE_AWS_SIGV4"):
            from clipserve_client.auth import AwsSigV4

            signer = AwsSigV4(os.environ["CLIPSERVE_AWS_SIGV4"])
            self.client.auth = lambda r: _with_headers(r, signer.signed_headers(r.method, r.url, r.body, r.headers))
        info = self.client.get("/", name="GET /").json()
        self.has_index = bool(info.get("search"))

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {**fields, **({"model": self.model} if self.model else {})}

    def _post(self, path: str, name: str, vectors: int | None = None, **request: Any) -> None:
        with self.client.post(path, name=name, catch_response=True, **request) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            body = response.json()
            got = len(body.get("results", [])) if vectors is None else len(
                [v for v in body.get("embeddings", []) if v is not None])
            if vectors is not None and got != vectors:
                response.failure(f"{got} vectors for {vectors} items")

    # the workloads ------------------------------------------------------------------------------------------------

    def one_text(self) -> None:
        self._post("/embed/text", "embed one text", 1, json=self._body(texts=[next(self._texts)]))

    def text_batch(self) -> None:
        texts = [next(self._texts) for _ in range(32)]
        self._post("/embed/text", "embed 32 texts", 32, json=self._body(texts=texts))

    def image_upload(self) -> None:
        files = [("images", ("photo.jpg", next(self._images), "image/jpeg"))]
        self._post("/embed/image", "embed one image (upload)", 1, files=files,
                   data={"model": self.model} if self.model else None)

    def image_base64(self) -> None:
        image = base64.b64encode(next(self._images)).decode("ascii")
        self._post("/embed/image", "embed one image (base64)", 1, json=self._body(images=[image]))

    def search_text(self) -> None:
        if self.has_index:
            self._post("/search", "search by text", None, json={"text": next(self._texts), "top_k": 10})

    def search_image(self) -> None:
        if self.has_index:
            image = base64.b64encode(next(self._images)).decode("ascii")
            self._post("/search", "search by image", None, json={"image": image, "top_k": 10})


class SearchApp(_Clipserve):
    """A search app's traffic: mostly text queries, some pictures, an occasional batch."""

    tasks = {_Clipserve.search_text: 50, _Clipserve.one_text: 20, _Clipserve.image_upload: 10,
             _Clipserve.image_base64: 5, _Clipserve.search_image: 10, _Clipserve.text_batch: 5}


class OneText(_Clipserve):
    tasks = [_Clipserve.one_text]


class TextBatch(_Clipserve):
    tasks = [_Clipserve.text_batch]


class ImageUpload(_Clipserve):
    tasks = [_Clipserve.image_upload]


class ImageBase64(_Clipserve):
    tasks = [_Clipserve.image_base64]


class SearchText(_Clipserve):
    tasks = [_Clipserve.search_text]
