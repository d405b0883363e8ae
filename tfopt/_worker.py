"""A recycled worker process for the native code that can crash or leak (the TFLite converter).

TF 2.21's converter leaks about 22 MB per ``convert()`` (tensorflow#122598) and its int8
calibrator can die with a signal (SIGSEGV on a bidirectional LSTM). `run` executes a picklable
function in one long-lived child process: started on first use, reused for many tasks, and
replaced after it crashed, after ``max_tasks`` tasks or once its memory grew by ``max_growth_mb``.
A crash becomes a `NativeCrashError` in the caller; the next task starts a fresh worker.

The child is a plain ``python -m tfopt._worker`` (not a ``multiprocessing`` spawn, which would
re-run the user's ``__main__``); tasks and results travel pickled over a pipe, and the child
gets the caller's ``sys.path`` so functions of the caller's modules import there too.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from tfopt.errors import NativeCrashError

log = logging.getLogger(__name__)

MAX_TASKS = 50  # tasks before a fresh worker (the converter's leak, ~22 MB a task)
# memory growth over the first task's before a fresh worker: about 12 leaked conversions; a fresh
# worker costs one TensorFlow import (seconds), a grown one holds the memory for the whole search
MAX_GROWTH_MB = 256.0


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class Worker:
    """One child process that runs tasks in turn (see the module's docstring).

    Args:
        max_tasks: tasks before the worker is replaced. Defaults to `MAX_TASKS`.
        max_growth_mb: memory growth (MB over its size after the first task) before the worker
            is replaced. Defaults to `MAX_GROWTH_MB`.
    """

    def __init__(self, *, max_tasks: int = MAX_TASKS, max_growth_mb: float = MAX_GROWTH_MB):
        self.max_tasks = int(max_tasks)
        self.max_growth_mb = float(max_growth_mb)
        self.process: subprocess.Popen | None = None
        self.started = 0  # processes started so far (tests and logs)
        self.peak_mb = 0.0  # the largest resident size a task ended with, over every process
        self._conn: Connection | None = None
        self._tasks = 0
        self._first_rss: float | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfopt._worker", str(child_r), str(child_w)],
            pass_fds=(child_r, child_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(child_r)
        os.close(child_w)
        self._conn = _Duplex(parent_r, parent_w)
        self._tasks, self._first_rss = 0, None
        self.started += 1
        log.debug("worker %d started (pid %d)", self.started, self.process.pid)

    def stop(self) -> None:
        """Ends the worker (it exits when its pipe closes); the next task starts a new one."""
        if self.process is None:
            return
        self._conn.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process, self._conn = None, None

    def run(self, fn, /, *args, stage: str, hint: str = "", **kwargs):
        """``fn(*args, **kwargs)`` in the worker; its exception is re-raised here.

        Args:
            fn: a module-level (picklable) function; its arguments and result must pickle.
            stage: what the task does, for the crash message (e.g. "int8 calibration").
            hint: what to do about a crash (the known workaround). Defaults to "".

        Raises:
            NativeCrashError: the worker died (a signal) while running the task.
        """
        with self._lock:
            if self.process is None:
                self._start()
            try:
                self._conn.send((fn, args, kwargs))
                status, value, rss = self._receive()
            except (EOFError, OSError, BrokenPipeError):
                code = self.process.wait()
                self.process, self._conn = None, None
                how = _signal_name(code)
                msg = f"{stage} crashed ({how}) in tfopt's worker process; this process is fine."
                raise NativeCrashError(f"{msg} {hint}".strip()) from None
            self._recycle(rss)
        if status == "error":
            raise value
        return value

    def _receive(self):
        while not self._conn.poll(0.2):
            if self.process.poll() is not None:
                raise EOFError
        return self._conn.recv()

    def _recycle(self, rss: float) -> None:
        self._tasks += 1
        self.peak_mb = max(self.peak_mb, rss)
        self._first_rss = rss if self._first_rss is None else self._first_rss
        grown = rss - self._first_rss
        if self._tasks >= self.max_tasks or grown > self.max_growth_mb:
            log.debug("worker recycled after %d tasks (+%.0f MB)", self._tasks, grown)
            self.stop()


class _Duplex:
    """A two-pipe connection (one ``Connection`` each way)."""

    def __init__(self, read_fd: int, write_fd: int):
        self._r = Connection(read_fd, writable=False)
        self._w = Connection(write_fd, readable=False)

    def send(self, obj) -> None:
        self._w.send(obj)

    def recv(self):
        return self._r.recv()

    def poll(self, timeout: float) -> bool:
        return self._r.poll(timeout)

    def close(self) -> None:
        self._w.close()
        self._r.close()


_WORKER: Worker | None = None


def worker() -> Worker:
    """The process's shared worker (stopped at exit)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = Worker()
        atexit.register(_WORKER.stop)
    return _WORKER


def run(fn, /, *args, stage: str, hint: str = "", **kwargs):
    """`Worker.run` on the shared worker."""
    return worker().run(fn, *args, stage=stage, hint=hint, **kwargs)


def _serve(read_fd: int, write_fd: int) -> None:
    conn = _Duplex(read_fd, write_fd)
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args, **kwargs))
        except Exception as e:  # re-raised in the caller
            reply = ("error", e)
        try:
            conn.send((*reply, rss_mb()))
        except Exception as e:  # an exception that does not pickle: its type and text
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {reply[1]}"), rss_mb()))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _serve(int(sys.argv[1]), int(sys.argv[2]))
