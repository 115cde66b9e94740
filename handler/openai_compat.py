"""OpenAI-compatible routes: ``POST /v1/embeddings`` and ``GET /v1/models``.

Teams already call embedding APIs through OpenAI's client libraries, and vector databases and
RAG frameworks speak that protocol; serving it lets them point an existing client at this URL.
The views reuse the native API's validation, limits, input loading and engine (``ClipApi``);
only the request/response shapes differ. Errors under ``/v1/`` are written in OpenAI's shape by
``handler.errors``. Images travel as infinity sends them: ``"modality": "image"`` with URLs or data
URIs in ``input``; since this protocol has no partial results, one failed image fails the request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from flask import Response, jsonify

from handler import scoring
from handler.errors import ImageFailed, InvalidRequest, ModelNotFound
from handler.openapi import RouteDoc
from handler.parsing import read_json
from handler.schemas import OpenAIEmbeddingResponse, OpenAIErrorResponse, OpenAIModelList

if TYPE_CHECKING:
    from handler.app import ClipApi

OWNER = "clipserve"
_ERRORS = ("invalid_json", "invalid_request", "image_failed", "model_not_found", "payload_too_large",
           "unsupported_media_type", "overloaded", "internal_error", "model_loading", "timeout")


class OpenAIViews:
    def __init__(self, api: "ClipApi") -> None:
        self.api = api
        self.created = int(time.time())

    def routes(self) -> list[tuple[RouteDoc, Callable[[], Any]]]:
        return [
            (RouteDoc("/v1/embeddings", "POST", "OpenAI-compatible embeddings (texts; images with modality=image).",
                      OpenAIEmbeddingResponse, self.api.models.openai_embeddings, errors=_ERRORS,
                      error_model=OpenAIErrorResponse), self.embeddings),
            (RouteDoc("/v1/models", "GET", "OpenAI-compatible model list: the served variant.", OpenAIModelList,
                      errors=("model_loading",), error_model=OpenAIErrorResponse), self.models),
        ]

    def models(self) -> Response:
        return jsonify({"object": "list", "data": [{"id": self.api.engine.info.variant, "object": "model",
                                                    "created": self.created, "owned_by": OWNER}]})

    def embeddings(self) -> Response:
        req = read_json(self.api.models.openai_embeddings)
        model_id = self._served_model(req.model)
        self._check_dimensions(req.dimensions)
        deadline = self.api.deadline()
        if req.modality == "image":
            vectors, tokens = self._embed_images(req.inputs, deadline), 0
        else:
            result = self.api.embed_texts(req.inputs, normalize=True, deadline=deadline, field="input")
            vectors, tokens = result.embeddings, sum(result.tokens)
        data = [{"object": "embedding", "embedding": vector, "index": i}
                for i, vector in enumerate(scoring.encode_vectors(vectors, req.encoding_format))]
        return jsonify({"object": "list", "data": data, "model": model_id,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _served_model(self, name: str) -> str:
        """The variant's id when ``name`` is it or its architecture name; else OpenAI's 404 model_not_found."""
        info = self.api.engine.info
        if name not in (info.variant, info.architecture):
            raise ModelNotFound(f"The model `{name[:100]}` does not exist here; this service serves "
                                f"`{info.variant}` (see GET /v1/models)", param="model")
        return info.variant

    def _check_dimensions(self, dimensions: int | None) -> None:
        dim = self.api.engine.info.dim
        if dimensions is not None and dimensions != dim:
            raise InvalidRequest(f"dimensions={dimensions} is not supported: this model's embeddings have {dim} "
                                 "dimensions and CLIP vectors are not trained to be shortened (not Matryoshka), so "
                                 f"a cut vector would not keep its similarities; omit `dimensions` or send {dim}",
                                 param="dimensions")

    def _embed_images(self, images: list[str], deadline: float) -> Any:
        prepared, _, errors = self.api.load_images(images, deadline)
        if errors:
            listed = "; ".join(f"input[{e['index']}]: {e['code']}: {e['message']}" for e in errors[:5])
            raise ImageFailed(listed + (f"; and {len(errors) - 5} more" if len(errors) > 5 else ""),
                              param=f"input[{errors[0]['index']}]")
        return self.api.encode_images(prepared, normalize=True, deadline=deadline)
