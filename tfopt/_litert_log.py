"""LiteRT's one start-up line, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", silenced.

LiteRT logs it once per process, on the first interpreter that applies the XNNPACK delegate, with a
C++ logger whose level no Python API or environment variable sets. `silence_xnnpack_banner`
creates that first interpreter itself, on a 656-byte model embedded here (``y = x + x``), with
file descriptor 2 pointed at a temporary file for the duration of that one call, then writes back
everything else that call printed. Every later interpreter then logs nothing, and stderr is never
redirected around user work (a crash there would be hidden). The CLI calls it once at start-up,
and so does each load-test process.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import zlib

BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"

# a float32 model computing x + x for x of shape (1, 2), zlib-compressed, base64
_TINY_MODEL = (
    "eNplUb1Kw1AYPWljW2ioBYN0yNChc7C1upe2QiBtoRZxEKqQDBmaQo2i4EOIs6Ojj+DgID6Fg0/haDz35kst+sEh"
    "X86953w/1wEwO/L3bTThoAEbdVjkKjCZg1yGhGgZQJfwC0ARWTBFlzCJjzRNTcl3iP5kfDKcHnuT8Xw0nPUGvVmP"
    "vpb2riDzyO8uoni+uoqTaBHOr8PVZbSMsUX+mXgiHok7uf8gdc6JuvRRQW3tq7iWZkuaK4lOhbWe0dRzHg4LZefL"
    "c4oyi6lVQMfttN29/x7Ku+0eZEcSL99p+kq8Edv8H/netNlfxpwjCQMXXJneJdhjXl151oRX+z2TeQKps7iIYqXY"
    "1Nq6voWqaGX2qiX5gHsxRFPY6M/YQP5mp1LnnRp1VBcPddYg7smrXXpByEdJbnPdr/eungUyTRZlslnJ3M+Q76f0"
    "dvPHx9Bvp3oxdT8/vqFJQw=="
)

_done = False


def silence_xnnpack_banner() -> None:
    """Creates this process's first LiteRT interpreter with the banner captured and dropped.

    Does nothing after its first call, or when ``ai_edge_litert`` is not installed, or when
    ``TFOPT_LITERT_BANNER=1`` is set (to see LiteRT's start-up line).
    """
    global _done
    if _done or os.environ.get("TFOPT_LITERT_BANNER") == "1":
        return
    _done = True
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return
    content = zlib.decompress(base64.b64decode(_TINY_MODEL))
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            try:
                Interpreter(model_content=content).allocate_tensors()
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        captured.seek(0)
        rest = captured.read().replace(BANNER, b"")
    if rest:  # anything else LiteRT said is shown
        os.write(2, rest)
