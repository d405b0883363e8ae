"""A user's own model through the CLI (issue 24): `run --check` rejects what `run` would reject
before training; auto's run directory is named after the model file."""

import numpy as np
import pytest

from tfopt.cli import main

keras = pytest.importorskip("keras")


def _own_model(path, *, channels: int = 1, classes: int = 3):
    model = keras.Sequential(
        [
            keras.Input((8, 8, channels)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(classes, activation="softmax", name="out"),
        ],
        name="mine",
    )
    model.save(path)
    return path


def _own_data(path, n: int = 60, classes: int = 3, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(n, 8, 8, 1)).astype("float32"),
        "y_train": rng.integers(0, classes, n),
        "x_test": rng.normal(size=(20, 8, 8, 1)).astype("float32"),
        "y_test": rng.integers(0, classes, 20),
    }
    np.savez(path, **{**arrays, **changes})
    return path


def _check(tmp_path, capsys, *extra, data=None):
    model = _own_model(tmp_path / "mine.keras")
    data = data or _own_data(tmp_path / "d.npz")
    steps = "steps=[{type: prune, epochs: 2}]"
    code = main(["run", "--model", str(model), "--data", str(data), "--check", steps, *extra])
    return code, capsys.readouterr()


def test_check_accepts_a_model_that_fits_its_data(tmp_path, capsys):
    code, out = _check(tmp_path, capsys)
    assert code == 0, out.err
    assert "type: prune" in out.out


def test_check_rejects_filters_that_match_no_layer_of_the_built_model(tmp_path, capsys):
    code, out = _check(tmp_path, capsys, "steps.0.filters=nosuchlayer")
    assert code == 2
    assert out.err.strip() == (
        "tfopt: config error: steps[0] (1_prune): filters='nosuchlayer' select no layer of model "
        "'mine'. Its layers: ['conv', 'flatten', 'out']"
    )


def test_check_rejects_a_model_with_fewer_outputs_than_classes(tmp_path, capsys):
    data = _own_data(tmp_path / "d5.npz", classes=5)
    code, out = _check(tmp_path, capsys, data=data)
    assert code == 1
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("tfopt: error: ") and last.endswith(
        "d5.npz has 5 classes (labels 0..4) but model 'mine' has 3 outputs; give it a 5-way head "
        "(a transfer: section with head: new) or check the labels"
    )


def test_check_rejects_images_without_their_channel_axis(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8, 8)).astype("float32")
    data = _own_data(tmp_path / "flat.npz", x_train=x, x_test=x[:20])
    code, out = _check(tmp_path, capsys, data=data)
    assert code == 1
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("tfopt: error: ") and last.endswith(
        "flat.npz's samples have shape (8, 8) but model 'mine' takes (8, 8, 1); add the channel "
        "axis, e.g. x = x[..., None]"
    )


def test_auto_names_its_run_directory_after_the_model_file(tmp_path):
    from tfopt import config
    from tfopt.cli._auto import default_run_dir
    from tfopt.cli._common import input_overrides

    model = _own_model(tmp_path / "my_model.keras")
    own = config.load(None, overrides=input_overrides(model=str(model)))
    out = default_run_dir(own, {"model": "a"})
    assert out.parent.as_posix() == "runs" and out.name.startswith("auto_my_model-")
    assert default_run_dir(own, {"model": "b"}) != out  # the hash still tells runs apart
    zoo = config.load(None, overrides=[])
    assert default_run_dir(zoo, {}).name.startswith("auto_default-")


def test_tune_takes_model_and_data_and_reports_the_starting_accuracy(tmp_path, capsys):
    import json

    import tfopt

    model = _own_model(tmp_path / "mine.keras")
    data = _own_data(tmp_path / "d.npz")
    out = tmp_path / "tune"
    args = ["--max-trials", "1", "--algorithm", "random", "--max-epochs", "1", "--quiet"]
    code = main(["tune", "--model", str(model), "--data", str(data), "--out", str(out), *args])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    # the starting model, as given, on the same validation split the trials are scored on
    ds = tfopt.data.from_npz(data, val_fraction=0.1, seed=0)
    mine = keras.models.load_model(model)
    expected = float(np.mean(mine.predict(ds.x_val, verbose=0).argmax(-1) == ds.y_val))
    assert report["start"]["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert report["start"]["model"] == "mine"
    md = (out / "report.md").read_text()
    assert f"Starting model (mine, as given): val {expected:.4f}" in md
    beaten = report["best"]["val_accuracy"] > report["start"]["val_accuracy"]
    assert ("No trial beat the starting model" in md) is not beaten
    assert "| start | " in md


def test_tune_report_says_when_no_trial_beat_the_starting_model():
    from tfopt.tune._search_training import markdown

    trial = {
        "trial_id": "0",
        "val_accuracy": 0.5,
        "test_accuracy": 0.4,
        "epochs_trained": 1,
        "seconds": 1.0,
        "values": {},
    }
    data = {
        "name": "t",
        "seconds": 1.0,
        "start": {"model": "mine", "val_accuracy": 0.9, "test_accuracy": 0.8},
        "best": trial,
        "config": "best.yaml",
        "trials": [trial],
        "searched": [],
        "importance": {},
        "tensorboard": "tb",
    }
    md = markdown(data)
    assert "Starting model (mine, as given): val 0.9000, test 0.8000." in md
    assert "No trial beat the starting model on validation accuracy" in md
    data["best"] = {**trial, "val_accuracy": 0.95}
    assert "No trial beat" not in markdown(data)
