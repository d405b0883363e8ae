"""The `tfopt` command's crash guard: a native crash (a signal) becomes one line that names the
stage and the known workaround, instead of "Segmentation fault".

The command runs in a child process (`run_guarded`, same stdin/stdout/stderr, nothing
redirected); the library marks what it is doing with `stage(...)`, which writes the stage and
its workaround to the file the guard names in ``TFOPT_STAGE_FILE`` (nothing happens without it:
library users and in-process calls of `tfopt.cli.main` are unaffected). A native wait that
holds the GIL (TensorFlow joining a cluster) is bounded by `deadline`. The guard returns the
line; the CLI prints it. Standard library only: the guard starts before TensorFlow would load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading

# a child that ignores SIGTERM this long (stuck in native code, where no Python handler runs) is
# killed, so that `timeout N tfopt ...` ends within N + 10 s
KILL_AFTER_S = 5.0
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


@contextlib.contextmanager
def deadline(seconds: float, name: str, reason: str):
    """Ends this process with SIGALRM when the block runs longer than ``seconds``: for a native
    wait that holds the GIL, where no Python timer or handler could run. The signal's default
    action needs no Python code; the guard then prints ``reason`` as the one line (`crash_line`).
    Outside the main thread nothing is armed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with stage(name, reason):
        previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if previous is not None:  # None: a handler set outside Python, left as it is
                signal.signal(signal.SIGALRM, previous)


def crash_line(command: str, returncode: int, stage_text: str) -> str:
    """The one line for a guarded command that died with signal ``-returncode``."""
    name, _, hint = stage_text.partition("\t")
    where = f" during {name}" if name else ""
    if -returncode == signal.SIGALRM:  # a `deadline` ran out
        return f"tfopt {command}: error: timed out{where}: {hint}".strip()
    try:
        sig = signal.Signals(-returncode).name
    except ValueError:
        sig = f"signal {-returncode}"
    line = f"tfopt {command}: crashed ({sig}){where} (a native crash, not a Python error)."
    return f"{line} {hint}".strip()


def watch_parent(on_orphaned, interval: float = 0.5, parent: int | None = None) -> threading.Event:
    """Calls ``on_orphaned`` (once, from a daemon thread) when this process's parent is no
    longer ``parent`` (default: the parent now): it died and the process was re-parented. Pass
    the pid the parent had before it started this process to catch a death before this call.
    Set the returned event to stop watching."""
    parent, done = os.getppid() if parent is None else parent, threading.Event()

    def watch():
        while not done.wait(interval):
            if os.getppid() != parent:
                done.set()
                on_orphaned()

    threading.Thread(target=watch, daemon=True, name="tfopt-parent-watch").start()
    return done


def _stop(child: subprocess.Popen, stopped: threading.Event) -> None:
    """SIGTERM to ``child``, and SIGKILL when it is still there `KILL_AFTER_S` later."""
    stopped.set()
    child.terminate()
    timer = threading.Timer(KILL_AFTER_S, lambda: child.poll() is None and child.kill())
    timer.daemon = True
    timer.start()


def run_guarded(argv: list[str], command: str) -> tuple[int, str | None]:
    """Runs ``python -m tfopt *argv`` in a child; returns its exit code and the line to print
    (None when the child said everything itself). A death by signal N is 128 + N, as a shell
    would have it, with `crash_line` (not when the guard stopped it, or for a SIGTERM)."""
    fd, path = tempfile.mkstemp(prefix="tfopt-stage-")
    os.close(fd)
    env = dict(os.environ, **{STAGE_FILE: path, GUARDED: "1"})
    child = subprocess.Popen([sys.executable, "-m", "tfopt", *argv], env=env)
    stopped = threading.Event()  # by us, on SIGTERM or when orphaned: no crash line
    forward = signal.signal(signal.SIGTERM, lambda *_: _stop(child, stopped))
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets Ctrl-C and says so
    # a guard whose parent died (killed -9) stops its command, which stops its own children
    orphaned = watch_parent(lambda: _stop(child, stopped))
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
    if code >= 0:
        return code, None
    told = stopped.is_set() or -code == signal.SIGTERM
    return 128 - code, None if told else crash_line(command, code, stage_text)
