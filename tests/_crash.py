"""Test-only tasks for tfopt's worker process (imported there by name)."""

import os
import signal


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def pid_and(value):
    return os.getpid(), value


def fail(message):
    raise ValueError(message)
