"""Runners for load-test tests; a module of their own so that spawned processes can unpickle them."""

import os
import signal
import time

import numpy as np


class FlakyRunner:
    """An identity runner that fails every request whose first value is negative."""

    runtime = "flaky"
    rebuildable = False
    input_shape = (3,)

    def clone(self):
        return FlakyRunner()

    def invoke(self, x):
        if x[0, 0] < 0:
            raise ValueError("negative input")
        return np.asarray(x)


class DiesOnLoad(FlakyRunner):
    """Kills the process that unpickles it: a replica that dies while starting."""

    rebuildable = True

    def __reduce__(self):
        return (_die, ())


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class StallsOnLoad(FlakyRunner):
    """Sleeps 120 s in the process that unpickles it: a replica that stalls while starting."""

    rebuildable = True

    def __reduce__(self):
        return (time.sleep, (120,))
