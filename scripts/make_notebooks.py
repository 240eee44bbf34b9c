#!/usr/bin/env python
"""Build notebooks/<name>.ipynb from the readable sources in notebooks/src/<name>.py.

The sources use the "percent" format (as jupytext and VS Code do):

    # %% [markdown]
    # # A title
    # Some text.

    # %% tags=["parameters"]
    budget = "smoke"

A cell starts at a ``# %%`` line; markdown cells have every line commented with ``# ``. The
generated notebooks carry no outputs (papermill fills them when `kdw reproduce` runs).

    python scripts/make_notebooks.py            # rebuild every notebook
    python scripts/make_notebooks.py --check    # exit 1 if a notebook is out of date
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
SRC, OUT = REPO / "notebooks" / "src", REPO / "notebooks"
CELL = re.compile(r"^# %%(?P<md> \[markdown\])?(?P<rest>.*)$")
METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "version": "3.11"},
}


def _tags(rest: str) -> list[str]:
    match = re.search(r"tags=(\[.*?\])", rest)
    return json.loads(match.group(1)) if match else []


def _markdown(lines: list[str]) -> str:
    out = []
    for line in lines:
        if line.startswith("# "):
            out.append(line[2:])
        elif line.strip() == "#":
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def parse(text: str) -> nbformat.NotebookNode:
    """Percent-format source -> a notebook without outputs."""
    cells, current, header = [], [], None

    def close():
        if header is None:
            return
        body = list(current)
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        md, tags = header
        make = new_markdown_cell if md else new_code_cell
        cell = make(_markdown(body) if md else "\n".join(body), id=f"cell-{len(cells):02d}")
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.splitlines():
        match = CELL.match(line)
        if match:
            close()
            header, current = (bool(match.group("md")), _tags(match.group("rest"))), []
        elif header is not None:
            current.append(line)
    close()
    notebook = new_notebook(cells=cells, metadata=METADATA)  # stable cell ids keep diffs small
    nbformat.validate(notebook)
    return notebook


def render(source: Path) -> str:
    return nbformat.writes(parse(source.read_text()), version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: every source)")
    parser.add_argument("--check", action="store_true", help="only check that notebooks are up to date")
    args = parser.parse_args(argv)
    sources = [SRC / f"{n}.py" for n in args.names] or sorted(SRC.glob("*.py"))
    stale = []
    for source in sources:
        if not source.is_file():
            print(f"error: {source} not found", file=sys.stderr)
            return 2
        target = OUT / f"{source.stem}.ipynb"
        text = render(source)
        if target.is_file() and target.read_text() == text:
            continue
        if args.check:
            stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(REPO)}")
    if stale:
        print(f"out of date (run scripts/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
