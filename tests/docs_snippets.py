"""docs/clients.md's code, run as written: each `<!-- snippet:NAME -->` block, with the page's URL replaced by a
test server's (tests/api/test_api_clients.py, tests/clients/test_client_docs.py)."""

from __future__ import annotations

import re

from servers import REPO

DOCS = REPO / "docs" / "clients.md"
DOC_URL = "http://127.0.0.1:8080"
# The Python client's snippets, each run by tests/clients/test_client_docs.py.
CLIENT_SNIPPETS = {"client-folder", "client-zero-shot", "client-search", "client-async", "client-local",
                   "client-compat"}


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet:{re.escape(name)} -->\n```\w+\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"docs/clients.md has no snippet {name!r}"
    return match.group(1)


def run_snippet(name: str, url: str, **replace: str) -> dict:
    """Run the snippet in a namespace of its own and return it; ``replace``: other text to swap (old=new)."""
    code = snippet(name).replace(DOC_URL, url)
    for old, new in replace.items():
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, f"docs/clients.md:{name}", "exec"), namespace)
    return namespace
