"""Exceptions raised by tfopt. Each says what was wrong and what to do about it."""


class TfoptError(Exception):
    """Base class for tfopt errors."""


class BackendError(TfoptError, ImportError):
    """Keras is not Keras 3 with the TensorFlow backend."""


class ConfigError(TfoptError, ValueError):
    """A YAML config or a ``key=value`` override is invalid. The message is one line."""


class OfflineError(TfoptError, OSError):
    """A loader needs the network and cannot reach it."""


class ExportCheckError(TfoptError):
    """An exported artifact disagrees with the Keras model beyond the tolerance."""


class MissingDependencyError(TfoptError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


class RewriteError(TfoptError, ValueError):
    """A model cannot be rewritten by a technique; the message names the layer and says why."""


class OutputDirError(TfoptError, FileExistsError):
    """An output path cannot be used (an existing file, a directory tfopt did not create, or an
    earlier run without ``--overwrite``); nothing was deleted. The message is one line."""


class RunMismatchError(TfoptError, ValueError):
    """A run directory holds a run of another model, data or settings; the message says what
    differs and what to do."""


class RunLockedError(TfoptError, OSError):
    """Another process works in the run directory (it holds its lock); the message says which
    one (pid, host, command, since when)."""


class DataError(TfoptError, ValueError):
    """Data is unusable: an unreadable file, a wrong shape, NaN/inf values, labels out of range.

    The message is one line naming what was expected and what was received.
    """


class ArtifactError(TfoptError, ValueError):
    """A model or artifact file cannot be read (empty, truncated, corrupt, or another kind)."""


class NativeCrashError(TfoptError, RuntimeError):
    """Native code (e.g. the TFLite converter or its int8 calibrator) died with a signal in a
    tfopt worker process; the caller's process is unharmed. The message names the stage, the
    signal and the known workaround, in one line."""
