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
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| 2 | 2 (2) |" in done.stdout
    assert "XNNPACK" not in done.stderr and "cuda" not in done.stderr.lower(), done.stderr
    assert done.stderr == ""
