"""/openapi.json generated from the pydantic models that validate requests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from handler.errors import STATUS
from handler.schemas import ErrorResponse

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


@dataclass(frozen=True)
class Multipart:
    """How an endpoint takes multipart/form-data: file parts named ``files``, plus the JSON body's simple fields."""

    files: str = "images"
    single: bool = False                    # one file part (``/search``'s image), not a list
    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()            # at least one of these fields must be present
    json_only: tuple[str, ...] = ("urls", "text_embeddings", "image_embeddings")   # not sendable as form fields


@dataclass(frozen=True)
class RouteDoc:
    path: str
    method: str
    summary: str
    response: type[BaseModel] | None       # None: not a JSON body (e.g. the HTML docs page)
    request: type[BaseModel] | None = None
    multipart: Multipart | None = None
    errors: tuple[str, ...] = field(default=())
    ok_status: int = 200
    error_model: type[BaseModel] = ErrorResponse   # the shape of this route's error bodies
    listed: bool = True                    # False: served, but not an API route (a page's asset files)


def build_openapi(routes: list[RouteDoc], *, title: str, version: str, description: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document: request and response bodies are the models' own JSON schemas."""
    wanted: list[tuple[type[BaseModel], str]] = [(ErrorResponse, "serialization")]
    routes = [route for route in routes if route.listed]
    for route in routes:
        wanted.append((route.error_model, "serialization"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
        if route.request is not None:
            wanted.append((route.request, "validation"))
    refs, schema = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "operationId": _operation_id(route),
                              "responses": _responses(route, refs)}
        params = _PATH_PARAM.findall(route.path)
        if params:
            op["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                for name in params]
        if route.request is not None:
            content = {"application/json": {"schema": refs[(route.request, "validation")]}}
            if route.multipart is not None:
                name = refs[(route.request, "validation")]["$ref"].rsplit("/", 1)[-1]
                content["multipart/form-data"] = {"schema": _multipart_schema(route, schema["$defs"][name])}
            op["requestBody"] = {"required": True, "content": content}
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }


def openapi_path(flask_path: str) -> str:
    """A Flask rule as OpenAPI writes it: ``/items/<path:item_id>`` -> ``/items/{item_id}``."""
    return _PATH_PARAM.sub(r"{\1}", flask_path)


def _operation_id(route: RouteDoc) -> str:
    name = _PATH_PARAM.sub(r"\1", route.path).strip("/").replace("/", "_").replace(".", "_") or "root"
    return f"{route.method.lower()}_{name}"


def _responses(route: RouteDoc, refs: dict) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        ok["content"] = {"application/json": {"schema": refs[(route.response, "serialization")]}}
    responses: dict[str, Any] = {str(route.ok_status): ok}
    error_schema = {"content": {"application/json": {"schema": refs[(route.error_model, "serialization")]}}}
    for code in route.errors:
        status = str(STATUS[code])
        if status in responses:
            responses[status]["description"] += f", {code}"
        else:
            responses[status] = {"description": code, **error_schema}
    return responses


def _multipart_schema(route: RouteDoc, json_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON request's simple fields as form fields, with the image list as file parts."""
    form = route.multipart
    skip = {form.files, *form.json_only}
    properties = {k: v for k, v in json_schema.get("properties", {}).items() if k not in skip}
    if form.single:
        properties[form.files] = {"type": "string", "format": "binary",
                                  "description": f"The image as a file part (curl -F {form.files}=@cat.jpg)."}
    else:
        properties[form.files] = {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "One file part per image (curl -F images=@cat.jpg)."}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if form.required:
        schema["required"] = list(form.required)
    if form.any_of:
        schema["anyOf"] = [{"required": [name]} for name in form.any_of]
    return schema
