"""Nothing lost, nothing written outside the run: output directories, names, run identity, resume
that trusts nothing, and CLI errors that end in one line (issue 12)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _helpers import compile_classifier, save_dense_model

from tfopt import _rundir
from tfopt.errors import OutputDirError, RunMismatchError


def _cli(capsys, *argv):
    from tfopt import cli

    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[tfopt]")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _thesis(d: Path) -> Path:
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("three years of work")
    return d / "thesis.txt"


# -- the directory rules -------------------------------------------------------------------------
def test_prepare_removes_only_what_tfopt_created(tmp_path):
    thesis = _thesis(tmp_path / "d")
    with pytest.raises(OutputDirError, match=r"--overwrite refused: .* not created by tfopt"):
        _rundir.prepare(tmp_path / "d", overwrite=True)
    with pytest.raises(OutputDirError, match="not a tfopt run directory"):
        _rundir.prepare(tmp_path / "d", resume=True)
    assert thesis.read_text() == "three years of work"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="is an existing file"):
        _rundir.prepare(tmp_path / "f")

    run = _rundir.prepare(tmp_path / "run")  # new: created and marked
    assert _rundir.is_owned(run)
    (run / "a.txt").write_text("earlier")
    with pytest.raises(OutputDirError, match="holds an earlier run; pass --overwrite"):
        _rundir.prepare(run)
    assert _rundir.prepare(run, resume=True) == run and (run / "a.txt").exists()
    _rundir.prepare(run, overwrite=True)
    assert _rundir.is_owned(run) and not (run / "a.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _rundir.is_owned(_rundir.prepare(empty))


def test_a_refused_block_removes_only_the_directory_it_made_and_left_bare(tmp_path):
    """`discard_if_refused`: a fresh run directory (marker and lock only) that holds nothing but
    bookkeeping when the block raises is removed; one that held an earlier run, or that got an
    output, is kept; a block that ends normally keeps it."""

    def refuse(path, write=None):
        with pytest.raises(ValueError, match="bad data"):
            with (
                _rundir.lock(path, command="t"),
                _rundir.discard_if_refused(path, written=("config.json",)),
            ):
                _rundir.write_json(path / "identity.json", {"run": 1})
                _rundir.write_json(path / "config.json", {})
                if write:
                    (path / write).write_text("x")
                raise ValueError("bad data")

    fresh = _rundir.prepare(tmp_path / "fresh", by="t")
    refuse(fresh)
    assert not fresh.exists()
    made = _rundir.prepare(tmp_path / "made", by="t")
    refuse(made, write="baseline.keras")  # something was made: kept
    assert sorted(p.name for p in made.iterdir()) == [
        ".tfopt-lock", ".tfopt-run", "baseline.keras", "config.json", "identity.json"
    ]  # fmt: skip
    earlier = _rundir.prepare(tmp_path / "earlier", by="t")
    (earlier / "notes.md").write_text("mine")
    refuse(earlier)  # not bare when the block began: an earlier run's directory is kept
    assert (earlier / "notes.md").read_text() == "mine"
    with _rundir.discard_if_refused(fresh := _rundir.prepare(tmp_path / "ok", by="t")):
        pass
    assert _rundir.is_owned(fresh)


@pytest.mark.parametrize(
    "name", ["../../escape", "/abs/victim", "..", ".hidden", "a/b", "a\\b", ""]
)
def test_names_are_plain_file_names(name):
    with pytest.raises(ValueError, match="must be a plain file name"):
        _rundir.check_name(name)


def test_atomic_writes_and_verify(tmp_path):
    p = _rundir.write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    d = _rundir.digest(p)
    assert _rundir.verify(p, d) is None
    p.write_bytes(p.read_bytes()[:3])
    assert "bytes" in _rundir.verify(p, d)
    assert "missing" in _rundir.verify(tmp_path / "nope", d)
    sealed = _rundir.seal_record({"metrics": {"path": str(p)}}, tmp_path)
    assert sealed["metrics"]["path"] == "r.json" and sealed["metrics"]["digest"]["bytes"] == 3


def test_identity_mismatch_says_what_differs(tmp_path):
    _rundir.claim_identity(tmp_path, "auto", {"train": {"epochs": 1}, "techniques": ["prune"]})
    _rundir.claim_identity(tmp_path, "auto", {"train": {"epochs": 1}, "techniques": ["prune"]})
    with pytest.raises(RunMismatchError) as e:
        _rundir.claim_identity(tmp_path, "auto", {"train": {"epochs": 5}, "techniques": ["prune"]})
    assert "train.epochs: 1 -> 5" in str(e.value) and "--overwrite" in str(e.value)
    assert "\n" not in str(e.value)


# -- the CLI: no escape, no deletion, one line ---------------------------------------------------
def test_run_names_cannot_escape_the_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(capsys, "run", "name=../../escape", "train.epochs=0")
    assert rc == 2 and _one_line(err).startswith("tfopt: config error: name: name must be a plain")
    victim = tmp_path / "victim.keras"
    victim.write_text("keep me")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"steps: [{{type: prune, name: {tmp_path / 'victim'}}}]\n")
    rc, _, err = _cli(capsys, "run", str(cfg), "--out", "o")
    assert rc == 2 and "steps[0].name: name must be a plain file name" in _one_line(err)
    rc, _, err = _cli(capsys, "run", "steps=[{type: qat, name: ../x}]", "--out", "o")
    assert rc == 2 and "steps[0].name" in _one_line(err)
    assert victim.read_text() == "keep me" and not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "victim.keras"]


def test_run_and_auto_never_delete_a_directory_tfopt_did_not_create(tmp_path, capsys):
    thesis = _thesis(tmp_path / "d")
    for argv in (
        ["run", "--out", str(tmp_path / "d"), "--overwrite"],
        ["run", "--out", str(tmp_path / "d")],
        ["auto", "--max-accuracy-drop", "0.01", "--max-trials", "1", "--epochs", "1"]
        + ["--out", str(tmp_path / "d"), "--overwrite"],
        ["auto", "--max-accuracy-drop", "0.01", "--out", str(tmp_path / "d")],
    ):
        rc, _, err = _cli(capsys, *argv)
        line = _one_line(err)
        assert rc == 1 and line.startswith("tfopt: error: ") and str(tmp_path / "d") in line, argv
        assert "not created by tfopt" in line or "not a tfopt run directory" in line
    assert thesis.read_text() == "three years of work"
    (tmp_path / "file").write_text("x")
    rc, _, err = _cli(capsys, "run", "--out", str(tmp_path / "file"))
    assert rc == 1 and "is an existing file" in _one_line(err)
    assert (tmp_path / "file").read_text() == "x"


def test_export_overwrite_replaces_only_its_own_savedmodel(tmp_path, capsys):
    m = save_dense_model(tmp_path / "m.keras", (6,))
    thesis = _thesis(tmp_path / "d")
    rc, _, err = _cli(capsys, "export", str(m), "--format", "savedmodel", "--out",
                      str(tmp_path / "d"), "--overwrite")  # fmt: skip
    assert rc == 1 and "not created by tfopt" in _one_line(err)
    assert thesis.exists()
    rc, _, err = _cli(capsys, "export", str(m), "--format", "savedmodel", "--out",
                      str(tmp_path / "d"))  # fmt: skip
    assert rc == 1 and "exists; pass overwrite=True (--overwrite)" in _one_line(err)
    sm = tmp_path / "sm"
    assert _cli(capsys, "export", str(m), "--format", "savedmodel", "--out", str(sm))[0] == 0
    assert _rundir.is_owned(sm) and (sm / "saved_model.pb").is_file()
    rc, _, err = _cli(capsys, "export", str(m), "--format", "savedmodel", "--out", str(sm))
    assert rc == 1 and "exists" in _one_line(err)
    rc, _, err = _cli(capsys, "export", str(m), "--format", "savedmodel", "--out", str(sm),
                      "--overwrite")  # fmt: skip
    assert rc == 0, err


def test_bad_inputs_end_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfgdir").mkdir()
    rc, _, err = _cli(capsys, "run", "cfgdir")
    assert rc == 2 and "'cfgdir' is a directory, not a YAML config file" in _one_line(err)
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 3)
    rc, _, err = _cli(capsys, "run", "bin.yaml")
    assert rc == 2 and "config 'bin.yaml' is not a YAML text file" in _one_line(err)
    (tmp_path / "bad.keras").write_bytes(b"\x90garbage")
    for argv in (["export", "bad.keras"], ["run", "--model", "bad.keras", "train.epochs=0"]):
        rc, _, err = _cli(capsys, *argv)
        line = _one_line(err)
        assert rc == 1 and "bad.keras' as a Keras 3 model: not a valid .keras file" in line, argv
        assert "not found" not in line.lower()
    rc, _, err = _cli(capsys, "export", "missing.keras")
    assert rc == 1 and "No such model file: 'missing.keras'" in _one_line(err)
    # an unknown builder option and a batch size no machine holds: one line, not a traceback
    for override in ("model.options.foo=1", "train.batch_size=100000000000000000000"):
        rc, _, err = _cli(capsys, "run", override, "train.epochs=1", "--out", "o")
        assert rc in (1, 2) and _one_line(err).startswith("tfopt: "), override
    # --debug shows the traceback
    rc, _, err = _cli(capsys, "run", "--debug", "model.options.foo=1", "train.epochs=0",
                      "--out", "o2")  # fmt: skip
    assert rc in (1, 2) and "Traceback (most recent call last)" in err


def test_a_model_file_as_config_is_the_model_of_the_default_config(tmp_path, capsys):
    m = save_dense_model(tmp_path / "my.keras", (8, 8, 1), 10)  # digits' shape
    rc, out, err = _cli(capsys, "run", str(m), "--check", "--data", "digits")
    assert rc == 0, err
    assert f"path: {m}" in out and "name: digits" in out and "is a model, not a config" in err
    rc, _, err = _cli(capsys, "run", str(m), "--model", "mnist1d_cnn")
    assert rc == 1 and "is a model, not a config, and --model" in _one_line(err)


def test_packaged_configs_by_name_from_anywhere(tmp_path, capsys, monkeypatch):
    from tfopt.config import load, packaged_configs, resolve_config

    monkeypatch.chdir(tmp_path)  # no configs/ directory here
    assert set(packaged_configs()) >= {"default", "prune_qat", "compress_all"}
    assert resolve_config("prune_qat") == packaged_configs()["prune_qat"]
    assert load("prune_qat").name == "prune_qat"
    rc, out, _ = _cli(capsys, "run", "prune_qat", "--check")
    assert rc == 0 and out.startswith("name: prune_qat")
    rc, _, err = _cli(capsys, "run", "prune_qta")
    assert rc == 2 and "did you mean 'prune_qat'?" in _one_line(err)


def test_a_relative_model_path_is_found_next_to_its_config(tmp_path, monkeypatch):
    from tfopt.config import load

    (tmp_path / "a").mkdir()
    save_dense_model(tmp_path / "a" / "m.keras", (6,))
    (tmp_path / "a" / "c.yaml").write_text("model: {name: null, path: m.keras}\n")
    moved = tmp_path / "b"
    shutil.move(tmp_path / "a", moved)
    monkeypatch.chdir(tmp_path)
    assert Path(load(moved / "c.yaml").model.path) == moved / "m.keras"


# -- tfopt auto: identity, resume ----------------------------------------------------------------
def test_auto_cli_refuses_to_resume_another_model_data_or_settings(
    tmp_path, capsys, monkeypatch, blobs
):
    monkeypatch.chdir(tmp_path)
    x, y = blobs(96, 0)
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    base = ["auto", "--max-accuracy-drop", "0.05", "--data", "b.npz", "--time-budget", "0.001"]
    small = ["--model", "mnist1d_cnn", "--epochs", "0"]
    rc, out, err = _cli(capsys, *base, *small, "--out", "d")
    assert rc == 3 and "[auto] baseline (float32 TFLite)" in out  # no candidate in 1 ms: exit 3
    ident = json.loads((tmp_path / "d" / "identity.json").read_text())
    assert ident["auto"]["train"]["epochs"] == 0 and ident["auto"]["model"]["name"] == "mnist1d_cnn"
    for other, differs in (
        (
            ["--model", "mnist1d_resnet", "--epochs", "0"],
            'model.name: "mnist1d_cnn" -> "mnist1d_resnet"',
        ),
        (["--model", "mnist1d_cnn", "--epochs", "1"], "train.epochs: 0 -> 1"),
        ([*small, "--techniques", "prune"], 'search.techniques: null -> ["prune"]'),
    ):
        rc, _, err = _cli(capsys, *base, *other, "--out", "d")
        line = _one_line(err)
        assert rc == 1 and differs in line and "--overwrite" in line, line
    # the default directory depends on the model: another model is another run (both are
    # claimed before the data loads, which fails here: no baseline is needed to tell them apart;
    # each refused run's directory, empty, is removed again)
    named = set()
    for model in ("mnist1d_cnn", "mnist1d_resnet"):
        rc, out, err = _cli(capsys, *base[:-4], "--data", "missing.npz", "--model", model)
        line = next(ln for ln in out.splitlines() if ln.startswith("[auto] run directory: "))
        named.add(line.split(": ", 1)[1].split()[0])
        assert rc == 1 and line.startswith("[auto] run directory: runs/auto_default-")
    assert len(named) == 2 and not any((tmp_path / n).exists() for n in named)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, blobs):
    """One search (1 screening trial + its refinement) on a tiny CNN; its directory is copied by
    each test that damages it."""
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn", width=4, dense=16)
    compile_classifier(model, 3e-3)
    train, val = blobs(192, 0), blobs(48, 1)
    model.fit(*train, epochs=2, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("auto") / "run"
    kw = dict(max_accuracy_drop=0.5, max_trials=1, refine=1, techniques=("prune",),
              space={"ft_epochs": 1}, seeds=[{"sparsity": 0.5}], verbose=1)  # fmt: skip
    res = tfopt.auto.optimize(model, train, val, out_dir=out, **kw)
    assert [c["trial_id"] for c in res.candidates] == ["0", "r000"]
    assert res.best["trial_id"] == "r000"
    return model, train, val, kw, out, res


def _resume(searched, out, **changes):
    import tfopt

    model, train, val, kw, _, _ = searched
    from _progress import progress_lines

    with progress_lines() as lines:
        res = tfopt.auto.optimize(model, train, val, out_dir=out, **{**kw, **changes})
    return res, lines


def test_auto_records_are_relative_and_a_moved_run_resumes(searched, tmp_path):
    out = searched[4]
    record = json.loads((out / "refine" / "r000" / "tfopt.json").read_text())
    assert record["metrics"]["path"] == "model.tflite" and record["keras_model"] == "model.keras"
    assert record["metrics"]["digest"] == _rundir.digest(out / "refine/r000/model.tflite")
    trial = json.loads(next((out / "search").glob("trial_*/tfopt.json")).read_text())
    assert trial["metrics"]["path"] == "model.tflite"
    recipe = (out / "recipe.yaml").read_text()
    assert "path: baseline.keras" in recipe and str(out) not in recipe.split("\nname:")[1]
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    res, lines = _resume(searched, moved)
    assert any("resuming: 2 trial(s) already done" in ln for ln in lines), lines
    assert not [ln for ln in lines if ln.startswith("[auto] trial ")]
    assert res.best["trial_id"] == "r000"
    assert Path(res.best["artifact"]).read_bytes() == (moved / "best.tflite").read_bytes()
    # the time of the earlier run counts: elapsed grows, it does not restart
    first = searched[5].elapsed_s
    assert res.elapsed_s > first
    assert json.loads((moved / "report.json").read_text())["elapsed_s"] > first


def test_auto_never_trusts_a_damaged_artifact(searched, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(searched[4], run)
    good = (run / "refine/r000/model.tflite").read_bytes()
    (run / "refine/r000/model.tflite").write_bytes(good[: len(good) // 2])  # truncated
    os.remove(run / "best.tflite")
    res, lines = _resume(searched, run)
    assert any(ln.startswith("[auto] r000 is re-made: model.tflite has") for ln in lines), lines
    r = {c["trial_id"]: c for c in res.candidates}["r000"]
    assert r["status"] == "COMPLETED" and r["refined_from"] == "0"
    remade = (run / "refine/r000/model.tflite").read_bytes()
    assert len(remade) > len(good) // 2 and res.best["trial_id"] == "r000"
    assert (run / "best.tflite").read_bytes() == remade

    # a screened trial's artifact changed on disk: the trial is not used, never copied
    trial_dir = next((run / "search").glob("trial_*"))
    (trial_dir / "model.tflite").write_bytes(b"")
    res, lines = _resume(searched, run)
    by_id = {c["trial_id"]: c for c in res.candidates}
    assert by_id["0"]["status"] == "ERROR" and "not used on resume" in by_id["0"]["error"]
    assert "model.tflite has 0 bytes" in by_id["0"]["error"]
    assert res.best["trial_id"] == "r000" and (run / "best.tflite").read_bytes() == remade


def test_auto_refuses_to_resume_changed_settings(searched):
    out = searched[4]
    with pytest.raises(RunMismatchError, match=r"settings.techniques: \[\"prune\"\] -> "):
        _resume(searched, out, techniques=("prune", "quantize"))
    with pytest.raises(RunMismatchError, match=r"settings.max_accuracy_drop: 0.5 -> 0.1"):
        _resume(searched, out, max_accuracy_drop=0.1)
