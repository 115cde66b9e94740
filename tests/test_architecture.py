"""The layout the docs promise: the import contracts hold, ARCHITECTURE.md names every folder, and no relative
link in the Markdown points at a missing file or heading."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def lint_imports() -> list[str]:
    script = Path(sys.executable).with_name("lint-imports")
    return [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]


def test_import_contracts_hold():
    """.importlinter: layers, protocols independent of each other, no web framework or torch where they do not
    belong, no circle inside a package."""
    result = subprocess.run(lint_imports(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contracts_catch_a_circle(tmp_path):
    """The check can fail: a protocol importing the app (the circle this layout removed) breaks two contracts."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in (".importlinter", "models", "inputs", "engine", "search", "ingest", "infra", "handler", "batch"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / name)
    protocol = copy / "handler" / "protocols" / "openai.py"
    protocol.write_text(protocol.read_text() + "\nfrom handler.app import create_app  # noqa: E402,F401\n")
    result = subprocess.run(lint_imports(), cwd=copy, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "handler.protocols.openai -> handler.app" in result.stdout


def test_architecture_names_every_folder():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = sorted(f for f in folders if f"`{f}/`" not in text)
    assert not missing, f"ARCHITECTURE.md does not describe: {missing}"


def markdown_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return sorted({ROOT / p for p in tracked} | set((ROOT / "docs").glob("*.md")) | {ROOT / "README.md"})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out += _LINK.findall(line)
    return out


def test_no_relative_link_is_broken():
    broken = []
    for page in markdown_files():
        for target in links(page):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file_part, _, anchor = target.partition("#")
            where = (page.parent / file_part).resolve() if file_part else page
            if not where.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title: one `two`\n\n[ok](#title-one-two) [bad](#nope)\n```\n[ignored](missing.md)\n```\n")
    assert anchors(page) == {"title-one-two"}
    assert links(page) == ["#title-one-two", "#nope"]


def test_readme_is_a_front_page_and_docs_pages_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    long_pages = {p.name: n for p in (ROOT / "docs").glob("*.md") if (n := len(p.read_text().splitlines())) > 320}
    assert not long_pages, long_pages
