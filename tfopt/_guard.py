"""The `tfopt` command's crash guard: a native crash (a signal) becomes one line that names the
stage and the known workaround, instead of "Segmentation fault".

The command runs in a child process (`run_guarded`, same stdin/stdout/stderr, nothing
redirected); the library marks what it is doing with `stage(...)`, which writes the stage and
its workaround to the file the guard names in ``TFOPT_STAGE_FILE`` (nothing happens without it:
library users and in-process calls of `tfopt.cli.main` are unaffected).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading

STAGE_FILE = "TFOPT_STAGE_FILE"
GUARDED = "TFOPT_GUARDED"

TRAINING_HINT = (
    "TF 2.21's oneDNN convolution kernels are known to crash in training: retry with "
    "TF_ENABLE_ONEDNN_OPTS=0 in the environment."
)


def _write(text: str) -> None:
    path = os.environ.get(STAGE_FILE)
    if path:
        with open(path, "w") as f:
            f.write(text)


@contextlib.contextmanager
def stage(name: str, hint: str = ""):
    """Marks ``name`` (with its known workaround ``hint``) as what the process is doing."""
    path = os.environ.get(STAGE_FILE)
    if not path:
        yield
        return
    try:
        with open(path) as f:
            before = f.read()
    except OSError:
        before = ""
    _write(f"{name}\t{hint}")
    try:
        yield
    finally:
        _write(before)


def crash_line(command: str, returncode: int, stage_text: str) -> str:
    """The one line printed when the guarded command died with signal ``-returncode``."""
    try:
        sig = signal.Signals(-returncode).name
    except ValueError:
        sig = f"signal {-returncode}"
    name, _, hint = stage_text.partition("\t")
    where = f" during {name}" if name else ""
    line = f"tfopt {command}: crashed ({sig}){where} (a native crash, not a Python error)."
    return f"{line} {hint}".strip()


def watch_parent(on_orphaned, interval: float = 0.5) -> threading.Event:
    """Calls ``on_orphaned`` (once, from a daemon thread) when this process's parent changes:
    the parent died and the process was re-parented. Set the returned event to stop watching."""
    parent, done = os.getppid(), threading.Event()

    def watch():
        while not done.wait(interval):
            if os.getppid() != parent:
                done.set()
                on_orphaned()

    threading.Thread(target=watch, daemon=True, name="tfopt-parent-watch").start()
    return done


def run_guarded(argv: list[str], command: str) -> int:
    """Runs ``python -m tfopt *argv`` in a child and returns its exit code; a death by signal N
    prints `crash_line` and returns 128 + N, as a shell would."""
    fd, path = tempfile.mkstemp(prefix="tfopt-stage-")
    os.close(fd)
    env = dict(os.environ, **{STAGE_FILE: path, GUARDED: "1"})
    child = subprocess.Popen([sys.executable, "-m", "tfopt", *argv], env=env)
    forward = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets Ctrl-C and says so
    # a guard whose parent died (killed -9) stops its command, which stops its own children
    orphaned = watch_parent(child.terminate)
    try:
        code = child.wait()
    finally:
        orphaned.set()
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, interrupt)
    try:
        with open(path) as f:
            stage_text = f.read()
    finally:
        os.unlink(path)
    if code < 0 and -code != signal.SIGTERM:
        print(crash_line(command, code, stage_text), file=sys.stderr, flush=True)
        return 128 - code
    return 128 - code if code < 0 else code
