"""Request bodies -> validated models: JSON for every endpoint, multipart/form-data where images are uploaded.

JSON is parsed here rather than with ``request.get_json`` so that every way a body can be bad
(undecodable bytes, deep nesting that overflows the parser, not an object) ends as a 400 in our shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from handler import jsonio
from handler.errors import InvalidJson, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)
ImageInput = str | bytes

MULTIPART = "multipart/form-data"
_LIST_FORM_FIELDS = ("texts", "templates")
_FILE_FIELD = "images"
_MAX_REPORTED_ERRORS = 5
_UNREADABLE = "the request body could not be read (malformed chunked encoding or an interrupted upload)"


def is_json_type(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_json(model: type[M]) -> M:
    """The body as ``model``: 415 if it is not JSON, 400 (invalid_json / invalid_request) if it does not parse or fit."""
    if not is_json_type(request.mimetype):
        raise UnsupportedMediaType(f"send Content-Type: application/json (got {request.mimetype or 'none'!r})")
    # Strict for JSON: a JSON body has real booleans and numbers, so `"normalize": 0` or `"yes"` is refused as the
    # schema says; multipart form fields are all strings and keep pydantic's lax parsing ("false" -> False).
    return validate(model, parse_json_object(read_body()), strict=True)


def read_body() -> bytes:
    """The raw body; 413 when a chunked body (no Content-Length) reaches the limit.

    Werkzeug stops reading a chunked body silently at MAX_CONTENT_LENGTH, which would surface as a
    confusing "invalid JSON" for what is really an oversized request.
    """
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise  # 413 and friends keep their meaning
    except Exception:  # noqa: BLE001 - the server's body reader: bad chunked framing and the like
        raise InvalidRequest(_UNREADABLE) from None
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise PayloadTooLarge("the request body is larger than the limit (see GET / for limits)")
    return raw


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidJson("the request body is empty; send a JSON object")
    try:
        data = jsonio.loads(raw)
    except RecursionError:
        raise InvalidJson("the JSON body is nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise InvalidJson(f"the body is not valid JSON ({_short(exc)})") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the JSON body must be an object, e.g. {\"texts\": [\"a cat\"]}")
    return data


def validate(model: type[M], data: dict[str, Any], *, strict: bool = False) -> M:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        param = _location(errors[0]["loc"]) if errors else None
        raise InvalidRequest(describe_validation_error(exc), param=param or None) from None
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply") from None


def read_with_images(model: type[M], max_image_bytes: int,
                     file_field: str = _FILE_FIELD) -> tuple[M, list[ImageInput] | None]:
    """JSON or multipart body -> (options model, image inputs or None when the request has no images).

    In multipart, each file part named ``file_field`` (``images``; ``/search`` takes one ``image``) is one
    image (raw file bytes); other parts are form fields with the JSON field names (``texts`` may repeat).
    Images may also be given as IMAGE strings in such form fields, but not both kinds at once (their
    relative order would be lost).
    """
    if request.mimetype != MULTIPART:
        parsed = read_json(model)
        return parsed, _images_of(parsed, file_field)
    try:
        files, form = request.files, request.form
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - as in read_body: the multipart stream could not be read
        raise InvalidRequest(_UNREADABLE) from None
    unexpected = [name for name in files if name != file_field]
    if unexpected:
        raise InvalidRequest(f"unexpected file part {unexpected[0]!r}; upload images as {file_field!r}")
    uploads = files.getlist(file_field)
    single = file_field != _FILE_FIELD  # a field holding one image, not a list
    fields: dict[str, Any] = {}
    for name in form:
        values = form.getlist(name)
        fields[name] = values if name in _LIST_FORM_FIELDS or name == _FILE_FIELD else values[-1]
    if "model" in request.args and "model" in model.model_fields:  # multipart's model may ride in the URL
        fields.setdefault("model", request.args["model"])
    if fields.get("templates") and len(fields["templates"]) == 1 and "{}" not in fields["templates"][0]:
        fields["templates"] = fields["templates"][0]  # one form value without a placeholder: a set's name
    if uploads and file_field in fields:
        raise InvalidRequest(f"send images either as file parts or as {file_field!r} form fields, not both")
    if single and len(uploads) > 1:
        raise InvalidRequest(f"send one {file_field!r} file part ({len(uploads)} given)")
    if not uploads:
        parsed = validate(model, fields)
        return parsed, _images_of(parsed, file_field)
    # Validate the options with one placeholder string per file; the images are the uploaded bytes.
    # (A model without the field, such as /index's, pairs the files with its items itself.)
    if file_field in model.model_fields:
        fields[file_field] = "" if single else [""] * len(uploads)
    parsed = validate(model, fields)
    return parsed, [upload.stream.read(max_image_bytes + 1) for upload in uploads]


def _images_of(parsed: BaseModel, field: str) -> list[ImageInput] | None:
    value = getattr(parsed, field, None)
    return [value] if isinstance(value, str) else value


def describe_validation_error(exc: ValidationError) -> str:
    """'texts[3]: String should have at most 2000 characters; ...' without echoing the input back."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    for error in errors[:_MAX_REPORTED_ERRORS]:
        where = _location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0][:120]
