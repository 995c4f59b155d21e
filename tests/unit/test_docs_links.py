"""Every Markdown file the repository's code and docs cite is in the repository.

Docstrings, comments, configs and docs may point readers at ``*.md`` files (``docs/mixer-wire.md
section 3``). A pointer to a file a clone does not have (notes kept outside the repository, say)
leaves the reader with nothing, so every mention of a ``.md`` file in a .py, .pyx, .pxd, .proto,
.yaml or .md file must name one that exists: by its path (from the repository root or from the
citing file's folder), or by a bare file name that some file of the repository has.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = {".py", ".pyx", ".pxd", ".proto", ".yaml", ".yml", ".md"}
SKIPPED_DIRS = {".git", ".venv", "build", ".local", ".hypothesis", ".pytest_cache", "node_modules", "__pycache__"}
# A path-like word ending in .md: letters, digits, '_', '-', '.', '/'; not part of a URL.
MENTION = re.compile(r"(?<![\w./:-])((?:[\w-]+/)*[\w][\w.-]*\.md)\b(?!/)")


def repo_files() -> list[Path]:
    return [p for p in ROOT.rglob("*") if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)]


def test_every_cited_markdown_file_exists() -> None:
    files = repo_files()
    names = {p.name for p in files if p.suffix == ".md"}
    missing = []
    for path in files:
        if path.suffix not in SCANNED or path.name == "test_docs_links.py":
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for mention in MENTION.findall(line):
                if "/" in mention:
                    found = (ROOT / mention).is_file() or (path.parent / mention).is_file()
                else:
                    found = mention in names
                if not found:
                    missing.append(f"{path.relative_to(ROOT)}:{lineno}: {mention}")
    assert missing == [], "cited .md files that are not in the repository:\n" + "\n".join(missing)


def test_the_check_catches_a_citation_of_a_missing_file() -> None:
    assert MENTION.findall("see shared/reference/wire.md section 1.4 and domain.md 4.2") == [
        "shared/reference/wire.md", "domain.md"]
    assert MENTION.findall("https://example.org/notes.md and docs/store.md") == ["docs/store.md"]
