"""Test-only tasks for tfopt's worker process (imported there by name)."""

import os
import signal


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def pid_and(value):
    return os.getpid(), value


def fail(message):
    raise ValueError(message)


_HELD = []


def grow(mb):
    """Holds ``mb`` more megabytes (touched, so resident) and returns the pid."""
    _HELD.append(bytearray(b"x" * (mb * 2**20)))
    return os.getpid()
