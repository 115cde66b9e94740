"""The page a test drives: what it requested, what it logged, and its screenshots (under test-output/, not
committed)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from servers import REPO

SCREENSHOTS = Path(os.environ.get("CLIPSERVE_SCREENSHOTS", REPO / "test-output" / "screenshots"))
API_KEY = "ui-test-key-0123456789"


@dataclass
class Watched:
    """A page, the requests it made and the console errors it logged."""

    page: object
    origin: str
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def watch(context, origin: str) -> Watched:
    """A new page in ``context`` whose requests to any other origin are aborted and recorded."""
    page = context.new_page()
    watched = Watched(page, origin)

    def route(r):
        url = r.request.url
        watched.requests.append(url)
        if url.startswith(("data:", "blob:")) or _origin(url) == origin:
            r.continue_()
        else:
            watched.foreign.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watched.errors.append(f"uncaught: {e}"))
    return watched
