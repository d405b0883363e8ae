"""The progress lines the library logs on the ``tfopt`` loggers, as a list (what `tfopt` shows)."""

from __future__ import annotations

import contextlib
import logging


class _Lines(logging.Handler):
    def __init__(self, lines: list[str], on_line):
        super().__init__(logging.INFO)
        self.lines, self.on_line = lines, on_line

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if self.on_line is not None:
            self.on_line(self.lines[-1])


@contextlib.contextmanager
def progress_lines(on_line=None):
    """Collects the INFO (and higher) messages of the ``tfopt`` loggers while the block runs;
    ``on_line(message)`` is called for each as it is logged."""
    lines: list[str] = []
    logger = logging.getLogger("tfopt")
    handler, level = _Lines(lines, on_line), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
