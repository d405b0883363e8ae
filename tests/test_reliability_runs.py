"""Issue 25, items 1-3, as tables of cases: run identity and one process per run directory,
recipes that mean one thing, bounded resources and bounded waits. Each case fails on the code
before the fix: it mixed searches, replayed another model, spawned without bound, or hung."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfopt import _rundir

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv):
    from tfopt import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("tfopt:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _npz(path: Path, *, classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, 150)
    x = (rng.normal(size=(150, 16, 1)) + y[:, None, None] * 0.8).astype("float32")
    np.savez(path, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    return path


def _tune_config(tmp_path: Path) -> Path:
    """A 1-epoch random search of a tiny CNN on a 3-class .npz next to the config."""
    _npz(tmp_path / "tiny.npz")
    space = {"width": 4, "depth": 1, "dense": 8, "batch_size": 32, "optimizer": ["adam", "sgd"]}
    cfg = {
        "name": "tiny",
        "data": {"name": "tiny.npz", "val_fraction": 0.2},
        "model": {"name": "mnist1d_cnn"},
        "train": {"epochs": 1, "batch_size": 32},
        "tune": {"algorithm": "random", "max_epochs": 1, "space": space},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- 1. run identity: every command that resumes refuses another search -----------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One finished 1-trial `tfopt tune` search in ``<tmp>/s``."""
    from tfopt import cli

    tmp = tmp_path_factory.mktemp("tune")
    path = _tune_config(tmp)
    assert (
        cli.main(["tune", str(path), "--max-trials", "1", "--out", str(tmp / "s"), "--quiet"]) == 0
    )
    return tmp, path


@pytest.mark.parametrize(
    "change, differs",
    [
        (["data.name={tmp}/other.npz"], 'data.file: "tiny.npz" -> "other.npz"'),
        (["model.name=mnist1d_resnet"], 'model.name: "mnist1d_cnn" -> "mnist1d_resnet"'),
        (["tune.space.width=6"], "tune.space.width: 4 -> 6"),
        (["train.batch_size=16"], "train.batch_size: 32 -> 16"),
        (["seed=1"], "seed: 0 -> 1"),
    ],
)
def test_tune_refuses_to_resume_another_search(tuned, capsys, change, differs):
    tmp, path = tuned
    _npz(tmp / "other.npz", classes=10, seed=1)
    before = json.loads((tmp / "s" / "report.json").read_text())["trials"]
    change = [c.format(tmp=tmp) for c in change]
    rc, _, err = _cli(capsys, "tune", path, *change, "--max-trials", "2", "--out", tmp / "s")
    line = _one_line(err)
    assert rc == 1 and differs in line and "--overwrite" in line, line
    # nothing mixed: the earlier search is as it was
    assert json.loads((tmp / "s" / "report.json").read_text())["trials"] == before


def test_tune_resumes_the_same_search_with_more_trials(tuned, capsys):
    tmp, path = tuned
    rc, _, err = _cli(capsys, "tune", path, "--max-trials", "2", "--out", tmp / "s", "--quiet")
    assert rc == 0, err
    trials = json.loads((tmp / "s" / "report.json").read_text())["trials"]
    assert sorted(t["trial_id"] for t in trials) == ["0", "1"]


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until it is killed."""
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tfopt import _rundir\n"
        f"with _rundir.lock({str(run_dir)!r}, command='tfopt auto'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "{config}", "--max-trials", "1", "--out", "{out}"],
        ["tune", "{config}", "--max-trials", "1", "--out", "{out}", "--overwrite"],
        ["tune", "{config}", "--workers", "1", "--out", "{out}"],
        ["auto", "--max-accuracy-drop", "0.1", "--epochs", "0", "--out", "{out}"],
        ["run", "train.epochs=0", "--out", "{out}", "--overwrite"],
    ],
    ids=["tune", "tune-overwrite", "tune-workers", "auto", "run-overwrite"],
)
def test_a_run_directory_in_use_is_refused_in_one_line(tmp_path, capsys, argv):
    out = _rundir.prepare(tmp_path / "out", by="tfopt auto")
    (out / "earlier.txt").write_text("the other process's work")
    holder = _hold_lock(out)
    try:
        argv = [a.format(config=_tune_config(tmp_path), out=out) for a in argv]
        rc, _, err = _cli(capsys, *argv)
    finally:
        holder.kill()
        holder.wait()
    line = _one_line(err)
    assert rc == 1, line
    assert f"is in use by another tfopt process: pid {holder.pid} on " in line, line
    assert "(tfopt auto, since " in line and "choose another --out" in line, line
    assert (out / "earlier.txt").read_text() == "the other process's work"
    # the OS dropped the killed holder's lock: the directory is free again
    with _rundir.lock(out, command="tfopt tune"):
        assert json.loads((out / _rundir.LOCK).read_text())["pid"] == os.getpid()


# -- 2. recipes that mean one thing ------------------------------------------------------------
def _keras_file(path: Path, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture
def recipe(tmp_path):
    """An auto run directory ``run/`` (recipe.yaml + its baseline.keras) and, in ``cwd/``, a
    folder with another model of the same name."""
    from tfopt.auto._recipe import recipe_config, write_recipe

    run = tmp_path / "run"
    run.mkdir()
    _keras_file(run / "baseline.keras", seed=0)
    best = {"trial_id": "r000", "val_accuracy": 0.758, "test_accuracy": 0.75, "gzip_bytes": 900}
    best["steps"] = [{"type": "prune", "target_sparsity": 0.5, "epochs": 1}]
    data = {"data": {"name": str(_npz(tmp_path / "d.npz")), "val_fraction": 0.2}}
    raw = recipe_config(best, out_dir=run, target="tflite-int8", seed=0, run_config=data)
    write_recipe(run / "recipe.yaml", raw, best=best)
    (tmp_path / "cwd").mkdir()
    _keras_file(tmp_path / "cwd" / "baseline.keras", seed=1)  # another model, the same name
    return tmp_path


@pytest.mark.parametrize(
    "copy_to, beside, expect",
    [
        # copied alone: its baseline is missing (the cwd's is never used)
        ("alone", None, "No such model file: '{tmp}/alone/baseline.keras'"),
        # copied next to another baseline.keras: its sha256 refuses it
        ("other", 1, "model.path '{tmp}/other/baseline.keras' is not the model this config"),
        # copied with its own baseline: that one is used, wherever the run starts
        ("own", 0, None),
    ],
)
def test_a_copied_recipe_replays_its_own_baseline_or_nothing(
    recipe, capsys, monkeypatch, copy_to, beside, expect
):
    import shutil

    tmp = recipe
    assert yaml.safe_load((tmp / "run" / "recipe.yaml").read_text())["model"]["sha256"] == (
        _rundir.sha256(tmp / "run" / "baseline.keras")
    )
    (tmp / copy_to).mkdir()
    shutil.copy(tmp / "run" / "recipe.yaml", tmp / copy_to / "recipe.yaml")
    if beside is not None:
        _keras_file(tmp / copy_to / "baseline.keras", seed=beside)
        if beside == 0:
            shutil.copy(tmp / "run" / "baseline.keras", tmp / copy_to / "baseline.keras")
    monkeypatch.chdir(tmp / "cwd")
    if expect is None:
        rc, out, err = _cli(capsys, "run", tmp / copy_to / "recipe.yaml", "--check")
        assert rc == 0 and yaml.safe_load(out)["model"]["path"] == str(
            tmp / copy_to / "baseline.keras"
        ), err
        return
    rc, _, err = _cli(capsys, "run", tmp / copy_to / "recipe.yaml", "--out", tmp / "replay")
    line = _one_line(err)
    assert rc in (1, 2) and expect.format(tmp=tmp) in line, line
    assert not (tmp / "replay" / "baseline.keras").exists()  # nothing trained or exported


def test_tune_best_yaml_names_its_files_absolutely_with_the_model_sha256(tmp_path, monkeypatch):
    from tfopt.tune._search_training import _load_config, run_config

    model = _keras_file(tmp_path / "m.keras", seed=0)
    _npz(tmp_path / "d.npz")
    (tmp_path / "c.yaml").write_text(
        "data: {name: d.npz}\nmodel: {name: null, path: m.keras}\ntransfer: {head: new}\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # the config's files are found next to it, not here
    cfg, raw = _load_config(tmp_path / "c.yaml")
    assert cfg.model.path == str(model)
    best = {"model_options": {}, "train": {"epochs": 1}, "transfer": None}
    out = run_config(raw, best)
    assert out["model"]["path"] == str(model) and out["data"]["name"] == str(tmp_path / "d.npz")
    assert out["model"]["sha256"] == _rundir.sha256(model)
