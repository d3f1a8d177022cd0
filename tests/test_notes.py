"""Every ``Note [X]`` named in csrc/ and pypool/ has exactly one definition there.

A Note is defined where a comment or docstring line, or a sentence in one, starts with
``Note [X]:``, or where a line is ``Note [X]`` underlined by ``~~~``; every other mention
is a reference.
References and names may wrap across comment lines. A Note defined twice drifts apart
and a reference to a Note defined nowhere explains nothing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("csrc", "pypool")
SUFFIXES = {".c", ".cpp", ".h", ".inc", ".py", ".pyi", ".txt", ".cmake"}
# Comment markers stripped before a line is read (C++, CMake/Python, C block comments).
MARKER = re.compile(r"^\s*(?://+|#+|/?\*+/?)?\s?")
NOTE = re.compile(r"Note\s+\[([^\]]+)\]")


def _lines(path: Path) -> list[str]:
    return [MARKER.sub("", raw, count=1) for raw in path.read_text(errors="replace").splitlines()]


def scan(base: Path = ROOT, roots=SCANNED) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(definitions, references) under base/roots: Note name -> ["path:line", ...]."""
    defs: dict[str, list[str]] = defaultdict(list)
    refs: dict[str, list[str]] = defaultdict(list)
    for root in roots:
        for path in sorted((base / root).rglob("*")):
            if not path.is_file() or path.suffix not in SUFFIXES:
                continue
            lines = _lines(path)
            # One text per file with lines joined by "\n", so a name that wraps is found;
            # offsets map back to line numbers.
            text = "\n".join(lines)
            starts = [0]
            for line in lines:
                starts.append(starts[-1] + len(line) + 1)
            for m in NOTE.finditer(text):
                name = " ".join(m.group(1).split())
                line_no = _line_of(starts, m.start())
                where = f"{path.relative_to(base)}:{line_no}"
                line_start = starts[line_no - 1] + _indent(lines[line_no - 1])
                opens = m.start() == line_start or text[line_start:m.start()].rstrip().endswith(".")
                after = text[m.end():]
                underlined = after.startswith("\n") and after[1:].lstrip().startswith("~~~")
                if (opens and after.startswith(":")) or (m.start() == line_start and underlined):
                    defs[name].append(where)
                else:
                    refs[name].append(where)
    return defs, refs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _line_of(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid
    return lo + 1


def test_every_note_has_exactly_one_definition():
    defs, refs = scan()
    assert len(defs) > 30, "the scan found too few Notes: the pattern no longer matches"
    twice = {name: places for name, places in defs.items() if len(places) > 1}
    nowhere = {name: places for name, places in refs.items() if name not in defs}
    assert not twice, f"Notes defined more than once: {twice}"
    assert not nowhere, f"Notes referenced but defined nowhere: {nowhere}"


@pytest.mark.parametrize(
    "text, defined, referenced",
    [
        ("// Note [A b]: why\n", {"A b"}, set()),
        ("# Note [A b]\n# ~~~~~~~~\n", {"A b"}, set()),
        ("// see Note [A b]: why\n", set(), {"A b"}),
        ("// (Note [A\n// b]) and\n", set(), {"A b"}),
        ('"""Note [A b]: why"""\n', set(), {"A b"}),
        ("Note [A b]: why\n", {"A b"}, set()),
        ("# Settings. Note [A b]: why\n", {"A b"}, set()),
        ("# (Note [A b]): why\n", set(), {"A b"}),
    ],
)
def test_scanner_tells_definitions_from_references(tmp_path, text, defined, referenced):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.cpp").write_text(text)
    defs, refs = scan(tmp_path, ("src",))
    assert set(defs) == defined
    assert set(refs) == referenced
