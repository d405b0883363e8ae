"""The `tfopt` command line. Subcommands live in `tfopt/cli/_<name>.py` (see CONTRIBUTING.md)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tfopt.errors import ConfigError, TfoptError

COMMANDS = ["run", "export", "bench", "auto", "tune"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfopt",
        description="Make Keras 3 models small and fast: prune, quantize, distill, search, export, benchmark.",
    )
    from tfopt import __version__

    parser.add_argument("--version", action="version", version=f"tfopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"tfopt.cli._{name}")
        module.add_parser(sub).set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    # before TensorFlow loads (here and in the load test's processes): no C++ log lines, such as
    # "failed call to cuInit" on a machine without a GPU (level 2 still prints that ERROR line);
    # Python exceptions are unaffected. Set TF_CPP_MIN_LOG_LEVEL=0 to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    # key=value overrides may come after options (`run c.yaml --out d train.epochs=3`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    from tfopt import _guard

    if from_command_line and not os.environ.get(_guard.GUARDED):
        # the command runs in a child: a native crash there becomes one line here
        code, line = _guard.run_guarded(sys.argv[1:], args.command)
        if line:
            print(line, file=sys.stderr, flush=True)
        return code
    from tfopt._litert_log import silence_xnnpack_banner

    silence_xnnpack_banner()  # LiteRT's "INFO: Created ... XNNPACK delegate" line
    show_progress()
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("tfopt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # any error ends in one line; --debug shows the traceback
        if debug:
            import traceback

            traceback.print_exc()
        print(f"tfopt: {error_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1


class _ProgressLines(logging.Handler):
    """Writes each record's message as one line, flushed: progress (INFO) to stdout, warnings and
    errors to stderr (where Python's last-resort handler put them). The stream is looked up per
    line, so a redirected or captured stdout receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def show_progress(level: int = logging.INFO) -> None:
    """The one logging setup of the `tfopt` command: the library logs on the ``tfopt`` loggers
    (and never prints); this shows their records at ``level`` and above on stdout, message only.
    Calling it again (another command in the same process) replaces the handler, never adds one.
    """
    logger = logging.getLogger("tfopt")
    for handler in [h for h in logger.handlers if isinstance(h, _ProgressLines)]:
        logger.removeHandler(handler)
    handler = _ProgressLines()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def error_line(e: BaseException) -> str:
    """The one line `tfopt` prints for ``e`` (after ``tfopt: ``)."""
    if isinstance(e, ConfigError):
        return f"config error: {_flat(e)}"
    if isinstance(e, TfoptError | FileNotFoundError | ValueError):
        return f"error: {_flat(e)}"
    if isinstance(e, MemoryError):
        return "error: out of memory (MemoryError); a value is too large for this machine"
    return f"error: {type(e).__name__}: {_flat(e)} (run with --debug for the traceback)"


def _flat(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 600 else text[:597] + "..."


if __name__ == "__main__":
    sys.exit(main())
