"""Module and function sizes of ``nim_async/`` at git revisions, measured with ``ast``.

    python scripts/layout_sizes.py 71095e2 HEAD        # before / after (issue 10)
    python scripts/layout_sizes.py HEAD --over 60      # the functions over 60 lines

Reads each revision with ``git archive`` (the working tree is not looked at). A function's
length is ``def`` to its last line; "body" leaves out the signature and the docstring.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    """One function or method: where, its whole length and its body's."""

    name: str
    lines: int
    body: int


def _sources(rev: str) -> dict[str, str]:
    tar = subprocess.run(
        ["git", "archive", "--format=tar", rev, "nim_async"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {
            m.name: archive.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile() and m.name.endswith(".py")
        }


def _functions(path: str, tree: ast.AST) -> list[Function]:
    found: list[Function] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                end = child.end_lineno or child.lineno
                first = child.body[0]
                doc = 0
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    doc = (first.end_lineno or first.lineno) - first.lineno + 1
                body = end - first.lineno + 1 - doc
                found.append(Function(f"{path}:{prefix}{child.name}", end - child.lineno + 1, body))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return found


def report(rev: str, over: int) -> None:
    """Print the module and function sizes of ``nim_async/`` at ``rev``."""
    sources = _sources(rev)
    sizes = {path: len(text.splitlines()) for path, text in sources.items()}
    functions = [f for path, text in sources.items() for f in _functions(path, ast.parse(text))]
    functions.sort(key=lambda f: -f.lines)
    print(f"== {rev}: {len(sizes)} modules, {sum(sizes.values())} lines")
    print(f"   modules > 500 lines: {sum(n > 500 for n in sizes.values())}, "
          f"> 600: {sum(n > 600 for n in sizes.values())}")  # fmt: skip
    for path, n in sorted(sizes.items(), key=lambda item: -item[1]):
        if n > 500:
            print(f"   {n:5d}  {path}")
    print(
        f"   functions: {len(functions)}; > 60 lines: {sum(f.lines > 60 for f in functions)}, "
        f"> 80: {sum(f.lines > 80 for f in functions)}; body > 60: "
        f"{sum(f.body > 60 for f in functions)}, > 80: {sum(f.body > 80 for f in functions)}"
    )
    for f in functions:
        if f.lines > over:
            print(f"   {f.lines:5d} (body {f.body:3d})  {f.name}")


def main() -> None:
    """Report every revision named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="git revisions (71095e2, HEAD, ...)")
    parser.add_argument("--over", type=int, default=60, help="list functions over N lines")
    args = parser.parse_args()
    for rev in args.revs:
        report(rev, args.over)


if __name__ == "__main__":
    main()
