"""OpenAI's embeddings protocol: ``POST /v1/embeddings`` and ``GET /v1/models``.

Teams already call embedding APIs through OpenAI's client libraries, and vector databases and
RAG frameworks speak that protocol; serving it lets them point an existing client at this URL.
Only the shapes differ from the native API: errors under ``/v1/`` are written as OpenAI's
``{"error": {"message", "type", "param", "code"}}``, which its client libraries parse. Like OpenAI it
takes up to 2,048 inputs (``OPENAI_MAX_INPUTS``), and token arrays of cl100k_base, which LangChain
sends by default, are decoded to their text (``handler.token_ids``). Images travel as infinity sends
them: ``"modality": "image"`` with URLs or data URIs in ``input``, at most ``MAX_ITEMS`` per request;
since this protocol has no partial results, one failed image fails the request.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response, jsonify

from engine.models import UnknownModel
from handler import scoring
from handler.errors import ApiError, InvalidRequest, ModelNotFound
from handler.openapi import RouteDoc
from handler.protocols.common import Protocol, Route
from handler.schemas import OpenAIEmbeddingResponse, OpenAIErrorResponse, OpenAIModelList
from handler.service import ClipService
from handler.token_ids import UnknownToken, VocabularyUnavailable, cl100k

OWNER = "clipserve"
_ERRORS = ("invalid_json", "invalid_request", "image_failed", "model_not_found", "payload_too_large",
           "unsupported_media_type", "overloaded", "internal_error", "model_loading", "timeout")
# OpenAI's error "type" by status (their client libraries pick an exception class by status).
_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def openai_error(error: ApiError) -> dict[str, Any]:
    kind = _TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


class OpenAIApi(Protocol):
    name = "openai"
    error_shape = staticmethod(openai_error)
    error_prefix = "/v1/"

    def __init__(self, service: ClipService) -> None:
        super().__init__(service)
        self.created = int(time.time())
        self.aliases = service.settings.aliases()

    def routes(self) -> list[Route]:
        return [
            Route(RouteDoc("/v1/embeddings", "POST",
                           "OpenAI-compatible embeddings (texts; images with modality=image).",
                           OpenAIEmbeddingResponse, self.service.models.openai_embeddings, errors=_ERRORS,
                           error_model=OpenAIErrorResponse), self.embeddings),
            Route(RouteDoc("/v1/models", "GET", "OpenAI-compatible model list: the served variant.", OpenAIModelList,
                           errors=("model_loading",), error_model=OpenAIErrorResponse), self.models),
        ]

    def models(self) -> Response:
        """Every served model (default first), as OpenAI lists models; `dim` once it has loaded."""
        return jsonify({"object": "list", "data": [
            {"id": m["id"], "object": "model", "created": self.created, "owned_by": OWNER, "dim": m["dim"]}
            for m in self.service.served_models()]})

    def embeddings(self) -> Response:
        call = self.receive(self.service.models.openai_embeddings)
        req = call.body
        model_id = self._served_model(req.model)
        self._check_dimensions(req.dimensions, model_id, call.deadline)
        if req.modality == "image":
            vectors = self.service.embed_every_image(self._images(req), deadline=call.deadline,
                                                     label=lambda i: f"input[{i}]", model=model_id)
            tokens = 0
        else:
            result = self.service.embed_texts(self._texts(req), normalize=True, deadline=call.deadline,
                                              field="input", model=model_id)
            vectors, tokens = result.embeddings, sum(result.tokens)
        data = [{"object": "embedding", "embedding": vector, "index": i}
                for i, vector in enumerate(scoring.encode_vectors(vectors, req.encoding_format))]
        return jsonify({"object": "list", "data": data, "model": model_id,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _images(self, req: Any) -> list[str]:
        limit = self.service.settings.max_items
        if req.token_arrays:
            raise InvalidRequest("input: token arrays are texts; with modality=image send IMAGE strings", param="input")
        if len(req.inputs) > limit:
            raise InvalidRequest(f"at most {limit} images per request, got {len(req.inputs)} (MAX_ITEMS: an image "
                                 f"may be {self.service.settings.max_image_bytes} bytes); send them in requests of "
                                 f"{limit}", param="input")
        return req.inputs

    def _texts(self, req: Any) -> list[str]:
        """The inputs as texts: token arrays (LangChain's default) decoded with cl100k_base."""
        if not req.token_arrays:
            return req.inputs
        try:
            decoder = cl100k()
        except VocabularyUnavailable as exc:
            raise InvalidRequest(f"input: token arrays cannot be decoded here ({exc}); send strings: LangChain "
                                 "OpenAIEmbeddings(check_embedding_ctx_length=False), LlamaIndex sends strings",
                                 param="input") from None
        texts = []
        limit = self.service.settings.max_text_chars
        for i, ids in enumerate(req.inputs):
            try:
                text = decoder.decode(ids)
            except UnknownToken as exc:
                raise InvalidRequest(f"input[{i}]: {exc}", param=f"input[{i}]") from None
            if len(text) > limit:
                raise InvalidRequest(f"input[{i}]: decodes to more than {limit} characters", param=f"input[{i}]")
            texts.append(text)
        return texts

    def _served_model(self, name: str) -> str:
        """The served variant ``name`` is, or is an alias or the architecture name of; else OpenAI's 404
        model_not_found (what OpenAI's clients expect for a model that does not exist) naming the served ones."""
        served = self.service.served_models()
        by_architecture = {m["architecture"]: m["id"] for m in served if m["architecture"]}
        if name in by_architecture and name not in self.aliases:
            return by_architecture[name]
        try:
            return self.service.model_name(name)
        except UnknownModel:
            raise ModelNotFound(f"The model `{name[:100]}` does not exist here; this service serves "
                                f"{', '.join(f'`{m}`' for m in self.service.engine.names)} (see GET /v1/models)",
                                param="model") from None

    def _check_dimensions(self, dimensions: int | None, model: str, deadline: Any) -> None:
        if dimensions is None:
            return
        with self.service.using(model, deadline) as engine:
            dim = engine.info.dim
        if dimensions != dim:
            raise InvalidRequest(f"dimensions={dimensions} is not supported: this model's embeddings have {dim} "
                                 "dimensions and CLIP vectors are not trained to be shortened (not Matryoshka), so "
                                 f"a cut vector would not keep its similarities; omit `dimensions` or send {dim}",
                                 param="dimensions")
