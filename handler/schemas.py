"""Request and response schemas. The request models validate bodies AND generate /openapi.json.

Request models are built per app by ``build_request_models`` so that the configured limits
(items per request, text length) appear in the schema as maxItems/maxLength, and a request
over them fails validation with the field and index named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from inputs.errors import CODES

EncodingFormat = Literal["float", "base64"]
ImageErrorCode = Literal[CODES]  # type: ignore[valid-type]

IMAGE_DOC = ("An IMAGE: an http(s) URL, a data:image/...;base64, URI, or bare base64 of the file bytes. "
             "Failures are reported per index in `errors`.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- responses ------------------------------------------------------------------------------------


class ModelRef(BaseModel):
    variant: str
    architecture: str


class ImageErrorItem(BaseModel):
    index: int = Field(ge=0, description="Position of the image in the request.")
    code: ImageErrorCode  # type: ignore[valid-type]
    message: str


Vector = Union[list[float], str]
VECTOR_DOC = "A list of floats, or with encoding_format=base64 a base64 string of little-endian float32."


class _Embedded(BaseModel):
    model: ModelRef
    dim: int


class TextEmbedResponse(_Embedded):
    embeddings: list[Vector] = Field(description=VECTOR_DOC)
    truncated: list[int] = Field(description="Indices of texts cut to the model's context length.")


class ImageEmbedResponse(_Embedded):
    embeddings: list[Optional[Vector]] = Field(description=VECTOR_DOC + " null where the image failed.")
    errors: list[ImageErrorItem]


class MixedEmbedResponse(_Embedded):
    text_embeddings: list[Vector]
    image_embeddings: list[Optional[Vector]]
    errors: list[ImageErrorItem]
    truncated: list[int]


class ScoreResponse(_Embedded):
    pairwise: bool
    clip_score: Union[list[Optional[list[float]]], list[Optional[float]]] = Field(
        description="max(100 * cosine, 0). Rows = images, columns = texts (flat list when pairwise); "
                    "null for a failed image.")
    cosine: Union[list[Optional[list[float]]], list[Optional[float]]]
    probs: Union[list[Optional[list[float]]], list[Optional[float]], None] = Field(
        description="Zero-shot probabilities as the model defines them (probs_kind): for CLIP a softmax over the texts "
                    "of logit_scale * cosine (null when pairwise); for SigLIP sigmoid(logit_scale * cosine + "
                    "logit_bias) per image-text pair, each on its own (also pairwise).")
    probs_kind: Literal["softmax", "sigmoid"] = Field(
        description="softmax: the probabilities of an image sum to 1 over the texts; sigmoid: each is independent.")
    errors: list[ImageErrorItem]
    truncated: list[int]


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="Cosine of the query and the item's stored vector.")
    clip_score: float = Field(description="max(100 * cosine, 0), as /score gives it.")
    metadata: Optional[dict[str, Any]] = Field(None, description="The item's metadata (include_metadata).")
    vector: Optional[list[float]] = Field(None, description="The item's stored unit vector (include_vectors).")


class IndexRef(BaseModel):
    name: str
    version: str
    count: Optional[int]
    modality: Literal["image", "text"] = Field(description="What the items' vectors were embedded from.")
    model: Optional[str] = Field(None, description="The model (variant) it was built with: searches and writes use it.")


class SearchResponse(_Embedded):
    results: list[SearchHit] = Field(description="Best first.")
    index: IndexRef


class ItemErrorItem(BaseModel):
    index: int = Field(ge=0, description="Position of the item in the request.")
    code: str
    message: str


class IndexWriteResponse(_Embedded):
    upserted: int = Field(description="Items written (a re-sent id replaces its item).")
    ids: list[str] = Field(description="The ids written, in request order.")
    errors: list[ItemErrorItem] = Field(description="Items not written, by position.")
    index: IndexRef


class IndexDeleteResponse(BaseModel):
    deleted: int = Field(description="Items that existed and were deleted.")
    index: IndexRef


class IngestResponse(BaseModel):
    result: Literal["upserted", "deleted", "skipped", "dead_lettered"] = Field(
        description="What the event did; every answer with this body acknowledges it.")
    reason: str = Field(description="Why it was skipped or dead-lettered (stale, gone, not_an_image, foreign_bucket, "
                                    "event_type, superseded, object_exists, invalid_image, too_large, ...); empty "
                                    "otherwise.")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "failed", "unhealthy"]
    reason: Optional[str] = None


class ModelInfoOut(BaseModel):
    variant: str
    architecture: str
    text_tower: str
    image_tower: str
    dim: int
    image_size: int
    context_length: int
    logit_scale: float
    precision: Literal["fp32", "bf16", "int8", "fp16"]
    runtime: Literal["torch", "onnx"] = Field(description="What runs the towers: torch, or ONNX Runtime.")
    device: Literal["cpu", "cuda"] = Field(description="Where the towers run.")
    gpu: Optional[str] = Field(None, description="The GPU's name (device cuda).")
    image_decode: Literal["cpu", "gpu"] = Field("cpu", description="Where JPEGs are decoded (IMAGE_DECODE).")
    int8_cosine: Optional[dict[str, float]] = Field(
        None, description="With precision int8: each tower's lowest cosine to fp32 on bake's probe set.")
    weights: str = Field(description="Fingerprint of the weight files; search indexes record the one they were "
                                     "built with.")
    score_kind: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="What /score's probs are: a softmax over the texts (CLIP) or a sigmoid per pair "
                               "(SigLIP).")
    logit_bias: Optional[float] = Field(None, description="SigLIP's trained bias (sigmoid(logit_scale * cos + "
                                                          "logit_bias)); null for CLIP.")
    license: str = Field("", description="The weights' license, as their publisher states it.")


class ServedModel(BaseModel):
    id: str = Field(description="The variant's name: what `model` takes.")
    default: bool = Field(description="Served to requests without `model`.")
    state: Literal["ready", "loading", "unloaded", "failed"] = Field(
        description="unloaded: not in memory now (loads on the first request for it).")
    aliases: list[str]
    architecture: Optional[str] = Field(None, description="The facts below are null until the model first loads.")
    dim: Optional[int] = None
    context_length: Optional[int] = None
    image_size: Optional[int] = None
    license: Optional[str] = None
    score_kind: Optional[Literal["softmax", "sigmoid"]] = None
    precision: Optional[str] = None
    runtime: Optional[str] = None
    weights: Optional[str] = Field(None, description="Fingerprint of its weight files (what an index records).")


class InfoResponse(BaseModel):
    service: str
    version: str
    status: Literal["ok", "loading", "failed", "unhealthy"]
    model: Optional[ModelInfoOut] = Field(description="The default model (null before its first load).")
    models: list[ServedModel] = Field(description="Every model this deployment serves, default first.")
    limits: dict[str, Union[int, float, bool]]
    search: Optional[dict[str, Any]] = Field(description="The search backend and its index; null when none is "
                                                         "configured.")
    endpoints: list[str]
    links: dict[str, str] = Field(description="Pages for people: the playground (when UI_ENABLED), the API docs, "
                                              "the OpenAPI document.")


class StatsResponse(BaseModel):
    service: str
    version: str
    model: Optional[ModelInfoOut]
    uptime_s: float
    routes: dict[str, dict[str, Any]] = Field(description="Per route pattern: requests, errors (4xx/5xx), statuses.")
    batches: dict[str, dict[str, Any]] = Field(description="Per kind: model calls, items, mean and max batch size, "
                                                           "mean queue wait.")
    cache: dict[str, dict[str, dict[str, Any]]] = Field(
        description="Per level (l1: in-process, l2: shared) and kind (text, image, search): hits, misses, hit_ratio.")
    redis: dict[str, Any] = Field(description="The shared cache: state ok, open (skipped after a failure) or "
                                              "unconfigured.")
    index: Optional[dict[str, Any]] = Field(description="The search index or collection: state, name, version, "
                                                        "count; null when none.")
    queue: Optional[dict[str, Any]] = Field(description="The model queue now; null while the model loads.")
    models: dict[str, dict[str, Any]] = Field(description="Per served model: state, requests, items queued, model "
                                                          "calls and items by kind, load time, loads, evictions, "
                                                          "budgeted and resident bytes.")
    memory: dict[str, Any] = Field(description="The models' memory budget and the bytes loaded or loading.")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Optional[list[dict[str, Any]]] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- OpenAI-compatible responses (/v1) ------------------------------------------------------------


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    embedding: Vector = Field(description=VECTOR_DOC)
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the text tower saw (special tokens included); 0 for images.")
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    dim: Optional[int] = Field(None, description="clipserve's addition: the embedding dimension (once loaded).")


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


# --- Weaviate's CLIP inference protocol (multi2vec-clip) ----------------------------------------------


class WeaviateVectors(BaseModel):
    textVectors: list[list[float]] = Field(description="Unit vectors of `texts`, in order (as /embed/text).")
    imageVectors: list[list[float]] = Field(description="Unit vectors of `images`, in order (as /embed/image).")


class WeaviateMeta(BaseModel):
    service: str
    version: str
    model: ModelInfoOut


class WeaviateError(BaseModel):
    error: str = Field(description="What went wrong; Weaviate shows it as 'fail with status N: <error>'.")
    code: str


# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestModels:
    text: type[BaseModel]
    image: type[BaseModel]
    mixed: type[BaseModel]
    score: type[BaseModel]
    openai_embeddings: type[BaseModel]
    search: type[BaseModel]
    index_write: type[BaseModel]
    index_delete: type[BaseModel]
    weaviate_vectorize: type[BaseModel]


TRUNCATE_DOC = ("Cut texts longer than the model's context (77 or 512 tokens, see GET /) to it and list them in "
                "`truncated`; false: refuse such a request with 400 naming the texts.")


QUERY_KINDS = ("text", "image", "vector", "id")
FILTER_DOC = ("Metadata filter in Qdrant's syntax: {\"must\": [...], \"should\": [...], \"must_not\": [...]} with "
              "{\"key\", \"match\": {\"value\"}}, {\"key\", \"match\": {\"any\": [...]}}, "
              "{\"key\", \"range\": {\"gt\", \"gte\", \"lt\", \"lte\"}} or nested filters. "
              "In multipart, a JSON string.")


def _json_in_form(value: Any) -> Any:
    """Multipart form fields are strings: `vector` and `filter` arrive there as JSON text."""
    if isinstance(value, str):
        from handler import jsonio

        try:
            return jsonio.loads(value)
        except ValueError:
            raise ValueError("must be JSON") from None
    return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TokenIds = Annotated[list[int], Field(min_length=1, description="Token ids of tiktoken's cl100k_base.")]


MODEL_DOC = ("The model to use: a served variant or an alias (GET / lists them); omitted: the default (the first of "
             "MODELS). In multipart, a form field or a query parameter.")
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _templates(value: Any) -> Any:
    from models.prompts import resolve_templates

    return value if value is None else list(resolve_templates(value))


def build_request_models(max_items: int, max_text_chars: int, max_top_k: int = 1000,
                         max_inputs: int = 2048) -> RequestModels:
    """Request models whose limits are the configured ones (and so show in /openapi.json)."""
    Text = Annotated[str, StringConstraints(max_length=max_text_chars)]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=max_items,
                                        description=f"1 to {max_items} texts of at most {max_text_chars} characters "
                                                    "(an abuse guard); a text longer than the model's context is cut "
                                                    "to it (truncate=true) or refused (truncate=false).")]
    Images = Annotated[list[str], Field(min_length=1, max_length=max_items,
                                        description=f"1 to {max_items} images. {IMAGE_DOC}")]
    Vectors = Annotated[list[list[float]], Field(min_length=1, max_length=max_items,
                                                 description="Embeddings computed earlier (any scale).")]

    class EmbedOptions(_Strict):
        normalize: bool = Field(True, description="L2-normalize the embeddings.")
        encoding_format: EncodingFormat = Field("float", description=VECTOR_DOC)
        model: ModelName = Field(None, description=MODEL_DOC)  # type: ignore[assignment]

    class TextEmbedRequest(EmbedOptions):
        texts: Texts
        truncate: bool = Field(True, description=TRUNCATE_DOC)

    # Optional fields are typed without None (and default to None) so that an explicit null is refused,
    # and the schema's oneOf/anyOf below says exactly what the validators accept.
    class ImageEmbedRequest(EmbedOptions):
        model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["images"]}, {"required": ["urls"]}]})
        images: Images = None  # type: ignore[assignment]
        urls: Images = Field(None, description="Older name for `images`; give one of the two.")  # type: ignore

        @model_validator(mode="after")
        def _one_image_list(self) -> "ImageEmbedRequest":
            if (self.images is None) == (self.urls is None):
                raise ValueError("give exactly one of `images` or `urls`")
            if self.images is None:
                self.images, self.urls = self.urls, None
            return self

    class MixedEmbedRequest(EmbedOptions):
        model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["texts"]}, {"required": ["images"]}]})
        texts: Texts = None  # type: ignore[assignment]
        images: Images = None  # type: ignore[assignment]
        truncate: bool = Field(True, description=TRUNCATE_DOC)

        @model_validator(mode="after")
        def _not_empty(self) -> "MixedEmbedRequest":
            if self.texts is None and self.images is None:
                raise ValueError("give `texts`, `images` or both")
            return self

    class ScoreRequest(_Strict):
        model_config = ConfigDict(json_schema_extra={"allOf": [
            {"oneOf": [{"required": ["texts"]}, {"required": ["text_embeddings"]}]},
            {"oneOf": [{"required": ["images"]}, {"required": ["image_embeddings"]}]}]})
        texts: Texts = None  # type: ignore[assignment]
        text_embeddings: Vectors = None  # type: ignore[assignment]
        images: Images = None  # type: ignore[assignment]
        image_embeddings: Vectors = None  # type: ignore[assignment]
        pairwise: bool = Field(False, description="Score images[i] against texts[i] (equal lengths); flat lists.")
        truncate: bool = Field(True, description=TRUNCATE_DOC)
        model: ModelName = Field(None, description=MODEL_DOC + " One model scores every item.")  # type: ignore
        templates: Union[Annotated[list[Annotated[str, StringConstraints(max_length=max_text_chars)]],
                                   Field(min_length=1, max_length=100)], str] = Field(  # type: ignore[assignment]
            None, description="Zero-shot prompt templates: `texts` are then labels, each embedded as the normalized "
                              "mean of its templates' embeddings (open_clip's zero_shot_classifier). A list of "
                              "templates with {} where the label goes, or a named set: openai_imagenet (CLIP's 80), "
                              "simple_imagenet (7).")

        _check_templates = field_validator("templates", mode="after")(_templates)

        @model_validator(mode="after")
        def _one_of_each_side(self) -> "ScoreRequest":
            if (self.texts is None) == (self.text_embeddings is None):
                raise ValueError("give exactly one of `texts` or `text_embeddings`")
            if (self.images is None) == (self.image_embeddings is None):
                raise ValueError("give exactly one of `images` or `image_embeddings`")
            if self.templates is not None and self.texts is None:
                raise ValueError("`templates` fill in `texts` (the labels): send `texts`")
            if self.pairwise:
                n_texts = len(self.texts if self.texts is not None else self.text_embeddings)
                n_images = len(self.images if self.images is not None else self.image_embeddings)
                if n_texts != n_images:
                    raise ValueError(f"pairwise scoring needs as many texts as images ({n_texts} != {n_images})")
            return self

    class OpenAIEmbeddingRequest(_Strict):
        """OpenAI's embeddings request; images as infinity does it (``modality: image``, URLs or data URIs)."""

        input: Union[str, list[str], TokenIds, list[TokenIds]] = Field(
            description=f"A text or a list of up to {max_inputs} texts (at most {max_text_chars} characters each), or "
                        "token arrays of tiktoken's cl100k_base (what LangChain sends by default), decoded to their "
                        f"text; with modality=image, 1 to {max_items} IMAGEs. {IMAGE_DOC}")
        model: str = Field(description="The served variant (see GET /v1/models), its architecture name, or an alias "
                                       "(MODEL_ALIASES).")
        encoding_format: EncodingFormat = Field("float", description=VECTOR_DOC)
        dimensions: Optional[Annotated[int, Field(ge=1)]] = Field(
            None, description="Must equal the model's dimension if given: CLIP vectors cannot be shortened.")
        user: Optional[str] = Field(None, description="Accepted for compatibility; not used or logged.")
        modality: Literal["text", "image"] = Field("text", description="What `input` holds.")

        @field_validator("input", mode="before")
        @classmethod
        def _counted(cls, value: Any) -> Any:
            """Clear messages for what OpenAI's clients get wrong (a union's messages name its branches)."""
            if isinstance(value, str) or not isinstance(value, list):
                return value
            if not value:
                raise ValueError("send at least one input")
            if all(_is_token(v) for v in value):
                return value  # one token array
            if len(value) > max_inputs:
                raise ValueError(f"at most {max_inputs} inputs per request, got {len(value)} (OPENAI_MAX_INPUTS)")
            arrays = isinstance(value[0], list)
            for i, item in enumerate(value):
                if arrays != isinstance(item, list) or not (isinstance(item, str) or arrays):
                    raise ValueError(f"item {i} does not match item 0: every input must be a string, or every "
                                     "input a token array")
                if arrays and not (item and all(_is_token(t) for t in item)):
                    raise ValueError(f"item {i}: a token array is a non-empty list of integer token ids")
            return value

        @property
        def inputs(self) -> list[Any]:
            """The inputs as a list: strings, or token arrays (lists of ids)."""
            if isinstance(self.input, str) or (self.input and isinstance(self.input[0], int)):
                return [self.input]
            return list(self.input)

        @property
        def token_arrays(self) -> bool:
            return not isinstance(self.inputs[0], str)

        @model_validator(mode="after")
        def _texts_fit(self) -> "OpenAIEmbeddingRequest":
            if self.modality == "text" and not self.token_arrays:
                for i, text in enumerate(self.inputs):
                    if len(text) > max_text_chars:
                        where = "input" if isinstance(self.input, str) else f"input[{i}]"
                        raise ValueError(f"{where}: String should have at most {max_text_chars} characters")
            return self

    class SearchRequest(_Strict):
        """Exactly one query: a text, an image, a vector, or the id of an indexed item ("more like this")."""

        model_config = ConfigDict(extra="forbid",
                                  json_schema_extra={"oneOf": [{"required": [k]} for k in QUERY_KINDS]})
        text: Annotated[str, StringConstraints(max_length=max_text_chars)] = Field(
            None, description="Embedded as /embed/text does (cut to the model's context).")  # type: ignore[assignment]
        image: str = Field(None, description=IMAGE_DOC.split(" Failures")[0] +  # type: ignore[assignment]
                           " In multipart, a file part named 'image'.")
        vector: Annotated[list[float], Field(min_length=1, max_length=65_536)] = Field(  # type: ignore[assignment]
            None, description="A query vector of the model's dimension (normalized here).")
        id: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(  # type: ignore[assignment]
            None, description="An indexed item's id: its stored vector is the query; the item itself is left out.")
        top_k: Annotated[int, Field(ge=1, le=max_top_k)] = Field(10, description=f"Results, at most {max_top_k}.")
        score_threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(  # type: ignore[assignment]
            None, description="Keep results whose cosine is at least this.")
        filter: dict[str, Any] = Field(None, description=FILTER_DOC)  # type: ignore[assignment]
        include_metadata: bool = Field(True, description="Return each result's metadata.")
        include_vectors: bool = Field(False, description="Return each result's stored vector.")
        model: ModelName = Field(None, description="The index's model (the one it was built with; any other is a "  # type: ignore[assignment]
                                                   "400); omitted: that model.")

        _decode_form_json = field_validator("vector", "filter", mode="before")(_json_in_form)

        @model_validator(mode="after")
        def _one_query(self) -> "SearchRequest":
            given = [k for k in QUERY_KINDS if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError(f"give exactly one of {', '.join(QUERY_KINDS)} (got {', '.join(given) or 'none'})")
            return self

        @property
        def kind(self) -> str:
            return next(k for k in QUERY_KINDS if getattr(self, k) is not None)

    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=4096)]

    class IndexItem(_Strict):
        """One item to write: its id, what to embed (or its vector) and its metadata."""

        id: ItemId
        text: Annotated[str, StringConstraints(max_length=max_text_chars)] = None  # type: ignore[assignment]
        image: str = Field(None, description=IMAGE_DOC.split(" Failures")[0])  # type: ignore[assignment]
        vector: Annotated[list[float], Field(min_length=1, max_length=65_536)] = None  # type: ignore[assignment]
        metadata: dict[str, Any] = Field(default_factory=dict, description="JSON values, by key ('id' is reserved).")

    class IndexWriteRequest(_Strict):
        """Items to embed (with the collection's modality) and upsert. In multipart: `items` is this list as a JSON
        string, without images, and one file part `images` per item, in order."""

        items: Annotated[list[IndexItem], Field(min_length=1, max_length=max_items)]
        model: ModelName = Field(None, description="The collection's model (any other is a 400); omitted: that "  # type: ignore[assignment]
                                                   "model.")

        @field_validator("items", mode="before")
        @classmethod
        def _items_in_form(cls, value: Any) -> Any:
            return _json_in_form(value)

    class IndexDeleteRequest(_Strict):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["ids"]},
                                                                                {"required": ["filter"]}]})
        ids: Annotated[list[ItemId], Field(min_length=1, max_length=10_000)] = None  # type: ignore[assignment]
        filter: dict[str, Any] = Field(None, description=FILTER_DOC)  # type: ignore[assignment]

        @model_validator(mode="after")
        def _one_selector(self) -> "IndexDeleteRequest":
            if (self.ids is None) == (self.filter is None):
                raise ValueError("give exactly one of `ids` or `filter`")
            return self

    class WeaviateVectorizeRequest(BaseModel):
        """What Weaviate's multi2vec-clip module sends: an object's texts and its images (bare base64). Other
        fields a newer Weaviate may add are ignored."""

        texts: Annotated[list[Text], Field(max_length=max_items)] = Field(default_factory=list)
        images: Annotated[list[str], Field(max_length=max_items)] = Field(
            default_factory=list, description=f"Base64 of the image files (also URLs or data URIs). {IMAGE_DOC}")

    return RequestModels(text=TextEmbedRequest, image=ImageEmbedRequest, mixed=MixedEmbedRequest, score=ScoreRequest,
                         openai_embeddings=OpenAIEmbeddingRequest, search=SearchRequest, index_write=IndexWriteRequest,
                         index_delete=IndexDeleteRequest, weaviate_vectorize=WeaviateVectorizeRequest)
