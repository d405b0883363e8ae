"""What a run shows its user: the report's step table and plot, and a quiet command line."""

import os
import subprocess
import sys

import pytest


def test_steps_are_a_readable_table_not_python_dicts():
    from tfopt._report import steps_markdown

    md = steps_markdown(
        {
            "1_prune": {
                "schedule": {"class": "PolynomialDecay", "final_sparsity": 0.8, "end_step": 100},
                "global_sparsity": 0.7999871,
                "layer_sparsity": {"conv1": 0.8, "fc1": 0.79},
                "skipped_layers": {},
            },
            "2_qat": {"qat_report": {"skipped": {"ln": "no int8 kernel | float"}, "folded": []}},
        }
    )
    assert md.splitlines() == [
        "| stage | fact | value |",
        "|---|---|---|",
        "| 1_prune | schedule | class=PolynomialDecay, final_sparsity=0.8, end_step=100 |",
        "|  | global_sparsity | 0.8 |",
        "|  | layer_sparsity | conv1=0.8, fc1=0.79 |",
        "|  | skipped_layers | none |",
        "| 2_qat | qat_report | skipped=(ln=no int8 kernel \\| float), folded=none |",
    ]


@pytest.mark.parametrize(
    "values, limits",
    [
        ([0.9005, 0.9015], (0.876, 0.926)),  # a 0.1-point spread: 5 points shown, not 0.2
        ([0.757, 0.901], (0.7354, 0.9226)),
        ([0.999, 1.0], (0.95, 1.0)),
        ([0.0, 0.01], (0.0, 0.05)),
        ([0.1, 0.95], (0.0, 1.0)),
    ],
)
def test_accuracy_axis_spans_at_least_five_points(values, limits):
    from tfopt.bench._report import accuracy_limits

    lo, hi = accuracy_limits(values)
    assert (lo, hi) == pytest.approx(limits, abs=1e-9)
    assert hi - lo >= 0.05 - 1e-9 and 0.0 <= lo <= min(values) and max(values) <= hi <= 1.0


def test_accuracy_vs_size_labels_every_artifact_with_its_size_and_ratio():
    from tfopt.bench._report import accuracy_size_figure

    rows = [
        {"artifact": "runs/x/baseline_tflite.tflite", "accuracy": 0.90, "gzip_bytes": 36_864},
        {"artifact": "runs/x/baseline_tflite_int8.tflite", "accuracy": 0.89, "gzip_bytes": 12_288},
        {"artifact": "runs/x/prune_tflite_int8.tflite", "accuracy": 0.88, "gzip_bytes": 6_144},
        {"artifact": "runs/x/prune.onnx", "accuracy": None, "gzip_bytes": 30_000},  # not measured
    ]
    ax = accuracy_size_figure(rows, reference_gzip_bytes=36_864).axes[0]
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert points == [(36.0, 0.90), (12.0, 0.89), (6.0, 0.88)]
    assert [t.get_text() for t in ax.texts] == [
        "baseline_tflite.tflite\n36.0 KiB, 1.0x smaller",
        "baseline_tflite_int8.tflite\n12.0 KiB, 3.0x smaller",
        "prune_tflite_int8.tflite\n6.0 KiB, 6.0x smaller",
    ]
    # sizes within a decade: a linear axis with plain numbers (a log axis printed 3x10^1)
    assert ax.get_xscale() == "linear"
    assert ax.xaxis.get_major_formatter()(12.5, 0) == "12.5"
    rows[2]["gzip_bytes"] = 2_048
    assert accuracy_size_figure(rows).axes[0].get_xscale() == "log"  # 36 KiB to 2 KiB
    assert "smaller" not in accuracy_size_figure(rows).axes[0].texts[0].get_text()


def test_plots_leave_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from tfopt.bench._report import plot_accuracy_vs_size

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    rows = [
        {"artifact": "a.tflite", "accuracy": 0.901, "gzip_bytes": 40_000},
        {"artifact": "b.tflite", "accuracy": 0.900, "gzip_bytes": 12_000},
    ]
    assert plot_accuracy_vs_size(rows, tmp_path / "r.png") == tmp_path / "r.png"
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
    # tfopt auto's Pareto plot too (it used to switch the process's backend to Agg)
    from tfopt.auto._report import plot

    point = {"status": "COMPLETED", "trial_id": "0", "val_accuracy": 0.9, "gzip_bytes": 9_000,
             "latency_ms": 0.2}  # fmt: skip
    data = {"baseline": {**point, "gzip_bytes": 40_000}, "candidates": [point], "front": ["0"],
            "max_accuracy_drop": 0.01, "best": point, "target": "tflite-int8",
            "objective": "size"}  # fmt: skip
    matplotlib.use("svg")  # not Agg: a plot that switches the backend shows here
    try:
        assert plot(tmp_path / "p.png", data).read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        matplotlib.use(backend)


def test_cli_prints_no_litert_or_tensorflow_chatter(tmp_path):
    import base64
    import zlib

    from tfopt._litert_log import _TINY_MODEL

    model = tmp_path / "add.tflite"
    model.write_bytes(zlib.decompress(base64.b64decode(_TINY_MODEL)))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    argv = [sys.executable, "-m", "tfopt", "bench", str(model), "--runs", "5"]
    # two load-test processes: each is a fresh process with its own LiteRT start-up
    argv += ["--concurrency", "1,2", "--duration", "0.2"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert "| 2 | 2 (2) |" in done.stdout
    assert "XNNPACK" not in done.stderr and "cuda" not in done.stderr.lower(), done.stderr
    assert done.stderr == ""


@pytest.mark.slow
def test_tune_and_auto_print_no_tensorflow_chatter(tmp_path):
    """`tfopt tune` and `tfopt auto` import KerasTuner (and so TensorFlow) at the top of tfopt.tune:
    TensorFlow's C++ start-up lines, some of which ignore TF_CPP_MIN_LOG_LEVEL, must not show."""
    from tfopt.tune._distributed import free_port

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    chief = f"127.0.0.1:{free_port()}"  # nobody listens: each fails after importing tfopt.tune
    procs = []
    for command in (["tune"], ["auto", "--max-accuracy-drop", "0.1"]):
        argv = [sys.executable, "-m", "tfopt", *command, "--chief", chief]
        argv += ["--connect-timeout", "1", "--out", str(tmp_path / command[0])]
        procs.append(subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=1800)  # a guard against hanging, not a speed bound
        lines = err.strip().splitlines()
        # the error itself, alone: no absl / oneDNN / CUDA / cpu_feature_guard / XNNPACK line
        assert proc.returncode == 1 and len(lines) == 1, err
        assert lines[0].startswith(f"tfopt: error: cannot reach the search chief at {chief}"), err
