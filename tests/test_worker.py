"""tfopt's recycled worker process (`tfopt._worker`): a native crash in a task is one error line
in the caller and the next task runs on a fresh worker; the worker is replaced after N tasks."""

import _crash
import pytest

from tfopt._worker import Worker
from tfopt.errors import NativeCrashError


def test_a_crashing_task_is_one_error_line_and_the_next_task_gets_a_fresh_worker():
    w = Worker()
    try:
        pid, value = w.run(_crash.pid_and, 1, stage="warm-up")
        assert value == 1
        with pytest.raises(NativeCrashError) as e:
            w.run(_crash.segfault, stage="int8 calibration of model 'tagger'", hint="Do X.")
        assert str(e.value) == (
            "int8 calibration of model 'tagger' crashed (SIGSEGV) in tfopt's worker process; "
            "this process is fine. Do X."
        )
        pid2, value = w.run(_crash.pid_and, 2, stage="after")
        assert value == 2 and pid2 != pid and w.started == 2
        with pytest.raises(ValueError, match="^bad input$"):  # a Python error is re-raised as is
            w.run(_crash.fail, "bad input", stage="failing")
        assert w.run(_crash.pid_and, 3, stage="same worker")[0] == pid2
    finally:
        w.stop()


def test_the_worker_is_replaced_once_its_memory_grew_past_the_limit():
    """The converter leak's defence: a worker that grew by more than max_growth_mb is replaced."""
    w = Worker(max_growth_mb=20)
    try:
        first = w.run(_crash.pid_and, 0, stage="task")[0]
        assert w.run(_crash.grow, 5, stage="task") == first  # +5 MB: kept
        assert w.run(_crash.grow, 40, stage="task") == first  # +45 MB: replaced after it
        assert w.run(_crash.pid_and, 1, stage="task")[0] != first and w.started == 2
    finally:
        w.stop()


def test_the_worker_is_replaced_after_max_tasks():
    w = Worker(max_tasks=2)
    try:
        pids = [w.run(_crash.pid_and, i, stage="task")[0] for i in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert w.started == 3
        assert w.peak_mb > 1.0  # each task reports its process's resident size
    finally:
        w.stop()


def test_a_converter_crash_names_the_stage_and_the_rnn_workaround():
    keras = pytest.importorskip("keras")
    from tfopt.export._tflite import _crash_stage_and_hint

    inputs = keras.Input((12, 4))
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name="bilstm")(
        inputs
    )
    tagger = keras.Model(inputs, keras.layers.Dense(5, name="tags")(h), name="tagger")
    stage, hint = _crash_stage_and_hint(tagger, "int8", calibrating=True)
    assert stage == "int8 calibration of model 'tagger'"
    assert hint == (
        "Known for RNN layers (bilstm): TFLite's calibrator crashes on them; export "
        "tflite-dynamic or tflite-float16 (no calibration) instead."
    )


_CRASH_IN_STAGES = """
import contextlib, os, signal
if os.environ.get("TFOPT_GUARDED"):  # in the guarded child only: crash once a stage begins
    import tfopt._guard as guard

    real = guard.stage

    @contextlib.contextmanager
    def crashing(name, hint=""):
        with real(name, hint):
            os.kill(os.getpid(), signal.SIGSEGV)
            yield

    guard.stage = crashing
"""


def test_a_native_crash_of_the_tfopt_command_is_one_line_naming_the_stage(tmp_path):
    """`tfopt export` dies with SIGSEGV inside the export stage (a sitecustomize in the child
    makes it): the command prints one line naming the stage and the workaround, exit 139."""
    import os
    import subprocess
    import sys

    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="tiny")
    model.save(tmp_path / "tiny.keras")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_CRASH_IN_STAGES)
    path = os.pathsep.join([str(tmp_path / "site"), *sys.path])
    cmd = [sys.executable, "-m", "tfopt", "export", str(tmp_path / "tiny.keras")]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path), cwd=tmp_path
    )
    assert out.returncode == 139
    assert out.stderr.strip().splitlines()[-1] == (
        "tfopt export: crashed (SIGSEGV) during export of model 'tiny' to tflite (a native "
        "crash, not a Python error). Try another format (e.g. onnx or tflite-float16)."
    )
    assert "Traceback" not in out.stderr and "Fatal Python error" not in out.stderr
