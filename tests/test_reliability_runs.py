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
    assert cli.main(["tune", str(path), "--max-trials", "1", "--out", str(tmp / "s"), "--quiet"]) == 0
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
