"""The code's shape: no function in tfopt/ has more than `MAX_LINES` lines of code.

A function's code lines are its non-blank lines that are not only a comment, without its
docstring. A nested function (or class) counts inside its parent too: its lines are read where
the parent is read, so a parent cannot get short by moving its body into closures.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tfopt"
MAX_LINES = 80


def _docstring_lines(tree: ast.AST) -> set[int]:
    """The line numbers of every docstring in ``tree`` (module, class and function ones)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _code_lines(source: str) -> set[int]:
    """The line numbers that hold a token other than a comment or a line break."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, code lines)`` of every function in the file at ``path``."""
    source = path.read_text()
    tree = ast.parse(source)
    code = _code_lines(source) - _docstring_lines(tree)
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    # from the def line (decorators excluded) to its last line
                    span = range(child.lineno, child.end_lineno + 1)
                    out.append((name, len(code.intersection(span))))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def test_function_lengths_are_counted_without_docstrings_and_comments(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        'def f(x):\n    """Doc.\n\n    More.\n    """\n    # a comment\n\n    y = (x +\n'
        "         1)\n    def g():\n        return y\n    return g\n"
    )
    assert function_lengths(path) == [("f", 6), ("f.g", 2)]


def test_no_function_in_tfopt_is_over_80_lines_of_code():
    over = [
        f"{path.relative_to(PACKAGE.parent)}:{name} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, n in function_lengths(path)
        if n > MAX_LINES
    ]
    assert not over, f"functions over {MAX_LINES} lines of code:\n" + "\n".join(over)
