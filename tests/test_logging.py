"""One logger: the library logs on the ``tfopt`` loggers and never prints; the CLI shows them."""

import ast
import logging
from pathlib import Path

import tfopt

ROOT = Path(tfopt.__file__).parent


def _library_modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        # the CLI decides what a person sees; the crash guard is stdlib-only and prints its line
        if rel.parts[0] != "cli" and rel.as_posix() != "_guard.py":
            yield rel.as_posix(), ast.parse(path.read_text())


def test_the_library_never_prints_nor_takes_a_logger_argument():
    prints, injected = [], []
    for rel, tree in _library_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                prints.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                injected += [
                    f"{rel}:{node.lineno} {n}=" for n in names if n in ("log", "logger", "say")
                ]
    assert prints == [] and injected == []


def test_the_cli_shows_the_tfopt_loggers_as_plain_lines(capsys):
    from tfopt.cli import show_progress

    logger = logging.getLogger("tfopt")
    level = logger.level
    try:
        show_progress()
        show_progress()  # a second command in the same process: still one handler
        logging.getLogger("tfopt._steps").info("[tfopt] %s", "prune: 2 layers")
        logging.getLogger("tfopt.auto._search").debug("[auto] not shown")
        logging.getLogger("tfopt.export._tflite").warning("converting in this process")
        out, err = capsys.readouterr()
        assert out == "[tfopt] prune: 2 layers\n" and err == "converting in this process\n"
        show_progress(logging.WARNING)  # `tfopt tune --quiet`
        logging.getLogger("tfopt.tune").info("[tune] trial 0")
        assert capsys.readouterr().out == ""
    finally:
        for handler in [h for h in logger.handlers if type(h).__name__ == "_ProgressLines"]:
            logger.removeHandler(handler)
        logger.setLevel(level)
