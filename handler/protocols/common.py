"""What every protocol does the same: receive a request (validated body, image parts, deadline), and the
``Protocol`` base that names its routes and the shape its errors take."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from flask import Response
from pydantic import BaseModel

from engine import stages
from handler.client import disconnect_check
from handler.errors import ErrorShape, native_shape
from handler.openapi import RouteDoc
from handler.parsing import ImageInput, read_json, read_with_images
from handler.service import ClipService, Deadline

M = TypeVar("M", bound=BaseModel)
View = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    doc: RouteDoc
    view: View


@dataclass(frozen=True)
class Call(Generic[M]):
    """One request as a view works with it: the validated body, its images (None when it has none) and when
    it must be answered (which also knows whether the client is still there)."""

    body: M
    images: list[ImageInput] | None
    deadline: Deadline


class Protocol(ABC):
    """A set of routes over the service, answering errors in one shape.

    ``name`` prefixes the routes' endpoint names; ``error_prefix``: paths under it that match no route
    (404, 405) are answered in this protocol's error shape too.
    """

    name: str = "native"
    error_shape: ErrorShape = staticmethod(native_shape)
    error_prefix: str | None = None

    def __init__(self, service: ClipService) -> None:
        self.service = service

    @abstractmethod
    def routes(self) -> list[Route]:
        """The protocol's routes, in the order /openapi.json and GET / list them."""

    def open_paths(self) -> set[str]:
        """Paths served without an API key even when keys are on (platform probes)."""
        return set()

    def receive(self, model: type[M], *, images: str | None = None) -> Call[M]:
        """Read and validate the body as ``model`` (JSON; with ``images``, also multipart whose file parts
        named so are the images) and start the request's deadline."""
        with stages.clock.timing("parse"):
            if images is None:
                body, files = read_json(model), None
            else:
                body, files = read_with_images(model, self.service.settings.max_image_bytes, file_field=images)
        return Call(body, files, self.service.deadline(disconnect_check()))

