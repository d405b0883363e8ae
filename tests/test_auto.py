"""tfopt.auto: Pareto front, the optimizer's loop, reports, budgets, interruption, resume, CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# -- Pareto front (exact, synthetic points) ------------------------------------------------------
def _p(acc, size, lat):
    return {"accuracy": acc, "gzip_bytes": size, "latency_ms": lat}


def test_pareto_front_exact():
    from tfopt.auto import dominates, pareto_front

    pts = [
        _p(0.90, 100, 1.0),  # 0 front: most accurate
        _p(0.80, 50, 1.0),  # 1 front: smaller
        _p(0.80, 100, 1.0),  # 2 dominated by 0 and 1
        _p(0.70, 50, 0.5),  # 3 front: fastest
        _p(0.90, 100, 1.0),  # 4 equal to 0: kept (equal points do not dominate)
        _p(0.85, 120, 2.0),  # 5 dominated by 0
        _p(0.60, 40, 3.0),  # 6 front: smallest
    ]
    assert pareto_front(pts) == [0, 1, 3, 4, 6]
    assert pareto_front(pts, {"accuracy": "max", "gzip_bytes": "min"}) == [0, 1, 4, 6]
    assert pareto_front(pts, {"gzip_bytes": "min"}) == [6]
    assert pareto_front(pts, {"latency_ms": "max"}) == [6]
    assert pareto_front([]) == []
    assert dominates(pts[0], pts[2]) and not dominates(pts[0], pts[4])
    assert not dominates(pts[1], pts[3]) and not dominates(pts[3], pts[1])
    with pytest.raises(ValueError, match=r"objectives\['accuracy'\] must be 'min' or 'max'"):
        pareto_front(pts, {"accuracy": "up"})
    with pytest.raises(KeyError, match=r"points\[0\] has no 'latency_ms'"):
        pareto_front([{"accuracy": 1.0, "gzip_bytes": 1}])


def test_pareto_front_matches_brute_force_on_random_points():
    from tfopt.auto import pareto_front

    rng = np.random.default_rng(0)
    pts = [_p(*v) for v in rng.integers(0, 5, size=(60, 3)).astype(float)]
    expected = [
        i
        for i, a in enumerate(pts)
        if not any(
            b["accuracy"] >= a["accuracy"]
            and b["gzip_bytes"] <= a["gzip_bytes"]
            and b["latency_ms"] <= a["latency_ms"]
            and (b["accuracy"], b["gzip_bytes"], b["latency_ms"])
            != (a["accuracy"], a["gzip_bytes"], a["latency_ms"])
            for b in pts
        )
    ]
    assert pareto_front(pts) == expected


# -- the optimizer ------------------------------------------------------------------------------
def _blobs(n, seed):
    """10 well-separated classes shaped like MNIST-1D: a tiny model learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(10, 40, 1)).astype("float32") * 2
    y = rng.integers(0, 10, size=n).astype("int32")
    x = centers[y] + 0.5 * rng.normal(size=(n, 40, 1)).astype("float32")
    return x, y


@pytest.fixture(scope="module")
def trained():
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn", width=8, dense=64)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train = _blobs(320, 0)
    model.fit(*train, epochs=3, batch_size=32, verbose=0)
    return model, train, _blobs(96, 1), _blobs(96, 2)


def test_optimize_measures_through_the_artifact_and_writes_the_report(trained, tmp_path):
    import tfopt

    model, train, val, test = trained
    weights = [w.copy() for w in model.get_weights()]
    lines = []
    res = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.05, max_trials=2,
        techniques=("prune",), space={"ft_epochs": 1, "sparsity": [0.5, 0.75]},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run", log=lines.append,
    )  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))  # not mutated
    base = res.baseline
    assert base["val_accuracy"] == tfopt.bench.evaluate(str(tmp_path / "run/baseline.tflite"), val)
    assert base["bytes"] == (tmp_path / "run/baseline.tflite").stat().st_size
    assert [c["status"] for c in res.candidates] == ["COMPLETED", "COMPLETED"]
    assert [c["recipe"]["sparsity"] for c in res.candidates] == [0.5, 0.75]
    assert len([ln for ln in lines if ln.startswith("[auto] trial ")]) == 2
    for c in res.candidates:
        assert c["val_accuracy"] == tfopt.bench.evaluate(c["artifact"], val)
        assert c["test_accuracy"] == tfopt.bench.evaluate(c["artifact"], test)
        assert c["gzip_bytes"] == tfopt.bench.file_sizes(c["artifact"])["gzip_bytes"]
        assert c["ratio"] == base["bytes"] / c["gzip_bytes"]
        assert c["within_budget"] == (
            base["val_accuracy"] - c["val_accuracy"] <= 0.05 + 1e-12
            and base["test_accuracy"] - c["test_accuracy"] <= 0.05 + 1e-12
        )
    points = [{"accuracy": c["val_accuracy"], "gzip_bytes": c["gzip_bytes"],
               "latency_ms": c["latency_ms"]} for c in res.candidates]  # fmt: skip
    assert res.front == [res.candidates[i]["trial_id"] for i in tfopt.auto.pareto_front(points)]
    ok = [c for c in res.candidates if c["within_budget"]]
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["front"] == res.front and len(report["candidates"]) == 2
    assert (tmp_path / "run/report.md").read_text().startswith("# tfopt auto")
    assert (tmp_path / "run/pareto.png").read_bytes()[:4] == b"\x89PNG"
    if ok:
        best = min(ok, key=lambda c: (c["gzip_bytes"], -c["val_accuracy"]))
        assert res.best["trial_id"] == best["trial_id"]
        assert res.best_path.read_bytes() == Path(best["artifact"]).read_bytes()
        assert tfopt.bench.evaluate(str(res.best_path), val) == best["val_accuracy"]
    else:
        assert res.best is None and not (tmp_path / "run/best.tflite").exists()

    # resume: the same out_dir with one more trial runs only the new one
    lines.clear()
    again = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.05, max_trials=3,
        techniques=("prune",), space={"ft_epochs": 1, "sparsity": [0.5, 0.75]},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run", log=lines.append,
    )  # fmt: skip
    assert any("resuming: 2 trial(s) already done" in ln for ln in lines)
    assert len([ln for ln in lines if ln.startswith("[auto] trial ")]) == 1
    assert [c["trial_id"] for c in again.candidates] == ["0", "1", "2"]


def _bad_int8_model():
    """Logits with one huge constant: int8 loses the small differences, so the export check fails."""
    import keras

    inputs = keras.Input((40, 1))
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    w, b = model.layers[-1].get_weights()
    b[:] = 0.0
    b[9] = -1000.0
    model.layers[-1].set_weights([w * 0.001, b])
    return model


def test_no_candidate_within_budget_still_writes_the_report(tmp_path):
    import tfopt

    data = _blobs(64, 0)
    lines = []
    res = tfopt.auto.optimize(
        _bad_int8_model(), data, data, max_accuracy_drop=0.0, techniques=(), max_trials=3,
        out_dir=tmp_path / "bad", log=lines.append,
    )  # fmt: skip
    assert res.best is None and res.best_path is None
    assert [c["status"] for c in res.candidates] == ["FAILED"]  # PTQ only: one recipe to try
    assert "ExportCheckError" in res.candidates[0]["error"]
    assert res.stopped == "search_space_exhausted"
    assert any("trial 0  FAILED" in ln for ln in lines)
    md = (tmp_path / "bad/report.md").read_text()
    assert "**No candidate met the accuracy budget.**" in md
    assert json.loads((tmp_path / "bad/report.json").read_text())["best"] is None
    assert (tmp_path / "bad/pareto.png").exists() and not (tmp_path / "bad/best.tflite").exists()


def test_time_budget_and_interrupt_leave_a_report(trained, tmp_path):
    import tfopt

    model, train, val, _ = trained
    res = tfopt.auto.optimize(
        model,
        train,
        val,
        max_accuracy_drop=0.01,
        time_budget=1e-3,
        techniques=(),
        out_dir=tmp_path / "tb",
        verbose=0,
    )
    assert res.stopped == "time_budget" and res.candidates == []
    assert json.loads((tmp_path / "tb/report.json").read_text())["stopped"] == "time_budget"

    def ctrl_c(line):  # a real SIGINT while the first trial reports
        if line.startswith("[auto] trial"):
            os.kill(os.getpid(), signal.SIGINT)

    res = tfopt.auto.optimize(
        model,
        train,
        val,
        max_accuracy_drop=0.5,
        max_trials=5,
        techniques=("prune",),
        space={"ft_epochs": 1},
        out_dir=tmp_path / "ki",
        log=ctrl_c,
    )
    assert res.stopped == "interrupted"
    assert len(res.candidates) == 1 and res.best["trial_id"] == "0"
    assert (tmp_path / "ki/best.tflite").read_bytes() == Path(
        res.candidates[0]["artifact"]
    ).read_bytes()
    assert json.loads((tmp_path / "ki/report.json").read_text())["stopped"] == "interrupted"


def test_optimize_argument_errors(trained):
    import tfopt

    model, train, val, _ = trained
    with pytest.raises(ValueError, match=r"max_accuracy_drop must be a fraction in \[0, 1\)"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=5)
    with pytest.raises(ValueError, match="Unrecognized objective='accuracy'"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, objective="accuracy")
    with pytest.raises(ValueError, match="Unrecognized target='onnx'"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, target="onnx")
    with pytest.raises(ValueError, match="time_budget must be > 0 seconds"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, time_budget=0)
    with pytest.raises(ValueError, match="val must hold the same non-zero number"):
        tfopt.auto.optimize(model, train, (val[0], val[1][:3]), max_accuracy_drop=0.01)
    with pytest.raises(TypeError, match="must be a keras.Model"):
        tfopt.auto.optimize("model.keras", train, val, max_accuracy_drop=0.01)


@pytest.mark.slow
def test_cli_auto(tmp_path):
    x, y = _blobs(160, 0)
    xt, yt = _blobs(64, 3)
    np.savez(tmp_path / "blobs.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "cli"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cmd = [sys.executable, "-m", "tfopt", "auto", "--max-accuracy-drop", "1.5"]
    bad = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert "max_accuracy_drop must be a fraction in [0, 1)" in bad.stderr
    bad = subprocess.run(cmd[:-1] + ["0.01", "--techniques", "prune,magic"], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "Unrecognized technique 'magic'" in bad.stderr
    cmd = [sys.executable, "-m", "tfopt", "auto", "--max-accuracy-drop", "0.99", "--data",
           str(tmp_path / "blobs.npz"), "--epochs", "1", "--max-trials", "1", "--out", str(out),
           "--techniques", "prune", "--target", "tflite"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[auto] trial 0 " in run.stdout and "[auto] best: trial 0" in run.stdout
    assert (out / "baseline.keras").exists() and (out / "best.tflite").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["trials_completed"] == 1 and report["best"]["trial_id"] == "0"
