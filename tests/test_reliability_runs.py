"""Issue 25, items 1-3, as tables of cases: run identity and one process per run directory,
recipes that mean one thing, bounded resources and bounded waits. Each case fails on the code
before the fix: it mixed searches, replayed another model, spawned without bound, or hung."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _helpers import child_env, shifted_npz

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


def _tune_config(tmp_path: Path) -> Path:
    """A 1-epoch random search of a tiny CNN on a 3-class .npz next to the config."""
    shifted_npz(tmp_path / "tiny.npz")
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
        (["tune.algorithm=bayesian"], 'tune.algorithm: "random" -> "bayesian"'),
        (["tune.space.width=6"], "tune.space.width: 4 -> 6"),
        (["train.batch_size=16"], "train.batch_size: 32 -> 16"),
        (["seed=1"], "seed: 0 -> 1"),
    ],
)
def test_tune_refuses_to_resume_another_search(tuned, capsys, change, differs):
    tmp, path = tuned
    shifted_npz(tmp / "other.npz", classes=10, seed=1)
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
    data = {"data": {"name": str(shifted_npz(tmp_path / "d.npz")), "val_fraction": 0.2}}
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
    shifted_npz(tmp_path / "d.npz")
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


# -- 3. bounded resources, bounded waits -------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "tune", "auto"])
def test_a_dangling_out_is_one_line_for_every_command(tmp_path, capsys, command):
    """A raw OSError / FileExistsError before; writing through it would create the target."""
    link, target = tmp_path / "out", tmp_path / "nowhere" / "dir"
    link.symlink_to(target)
    data = shifted_npz(tmp_path / "d.npz")
    argv = {
        "run": ["run", f"data.name={data}", "train.epochs=1"],
        "tune": ["tune", _tune_config(tmp_path)],
        "auto": ["auto", "--data", data, "--epochs", "0", "--max-accuracy-drop", "0.1"],
    }[command]
    rc, _, err = _cli(capsys, *argv, "--out", link)
    assert rc == 1 and _one_line(err) == (
        f"tfopt: error: --out {str(link)!r} is a dangling symbolic link (to {str(target)!r}); "
        "remove it or choose another --out"
    )
    assert not target.parent.exists()


@pytest.mark.parametrize("command", ["tune", "auto"])
def test_workers_above_what_the_machine_can_run_are_refused(tmp_path, capsys, monkeypatch, command):
    from tfopt.tune import _distributed as dist

    def spawn(*a, **k):  # before the cap, 100000 workers were spawned, one TF process each
        raise AssertionError("a process was spawned")

    monkeypatch.setattr(dist, "_spawn", spawn)
    cap, _ = dist.max_workers()
    assert 1 <= cap <= dist._cores()
    argv = {
        "tune": ["tune", _tune_config(tmp_path)],
        "auto": ["auto", "--max-accuracy-drop", "0.1", "--epochs", "0"],
    }[command]
    rc, _, err = _cli(capsys, *argv, "--workers", 100000, "--out", tmp_path / "o")
    line = _one_line(err)
    assert rc == 1 and f"--workers must be at most {cap} on this machine (" in line, line
    assert "Received: --workers=100000" in line and not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=f"workers must be at most {cap}"):
        dist.launch([], workers=cap + 1)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_connect_timeout_that_never_ends_is_refused(capsys, value):
    from tfopt.cli import build_parser
    from tfopt.tune import _distributed as dist

    for command in ("tune", "auto"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--connect-timeout", value])
        assert "--connect-timeout must be a finite number of seconds > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--connect-timeout must be a finite number"):
        dist.check_reachable("127.0.0.1", dist.free_port(), timeout=float(value))


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_the_launcher_dies_with_its_parent(tmp_path):
    """`tfopt tune --workers 1` under a parent that is killed -9 (a `timeout` killed by an outer
    guard): the launcher stops its chief and workers and ends, instead of spawning on."""
    path = _tune_config(tmp_path)
    log = tmp_path / "launcher.log"
    launcher = [sys.executable, "-m", "tfopt", "tune", str(path), "tune.max_trials=50"]
    launcher += ["--workers", "1", "--out", str(tmp_path / "s")]
    parent_script = (
        "import subprocess, sys, time\n"
        f"with open({str(log)!r}, 'w') as f:\n"
        f"    p = subprocess.Popen({launcher!r}, stdout=f, stderr=subprocess.STDOUT)\n"
        "print(p.pid, flush=True); time.sleep(600)\n"
    )
    env = child_env()
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], stdout=subprocess.PIPE, text=True, env=env
    )
    pids = [int(parent.stdout.readline())]
    try:
        while "chief pid" not in log.read_text():
            assert not _gone(pids[0]), log.read_text()
            time.sleep(0.2)
        pids.append(int(log.read_text().split("chief pid ")[1].split()[0]))
        parent.kill()  # SIGKILL: no handler of the parent runs
        parent.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        assert [p for p in pids if not _gone(p)] == [], log.read_text()
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_multi_worker_peer_that_never_comes_is_one_line(tmp_path, capsys, monkeypatch):
    from tfopt.tune._distributed import free_port

    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    conf = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(conf))
    argv = ["run", "train.strategy=multi_worker", "train.peer_timeout=2", "--out", tmp_path / "r"]
    rc, _, err = _cli(capsys, *argv)
    line = _one_line(err)
    assert rc == 2 and line.startswith("tfopt: config error: train.strategy: "), line
    assert f"worker 1 at {workers[1]} did not come within 2 s (train.peer_timeout)" in line
    assert not (tmp_path / "r").exists()
    for bad in ("nan", "inf", "0"):
        rc, _, err = _cli(capsys, "run", f"train.peer_timeout={bad}", "--check")
        assert rc == 2 and "train.peer_timeout" in _one_line(err)


def test_a_multi_worker_peer_that_listens_but_never_joins_ends_the_command_in_one_line(tmp_path):
    """The peer's port accepts connections (a task that died after the others saw it listen, or
    no TensorFlow at all): TensorFlow waited for it to join forever, holding the GIL, and even
    `timeout`'s SIGTERM did not end the command. Now it ends after train.peer_timeout."""
    import socket

    from tfopt.tune._distributed import free_port

    with socket.socket() as peer:
        peer.bind(("127.0.0.1", 0))
        peer.listen(16)
        workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{peer.getsockname()[1]}"]
        conf = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}
        env = child_env(TF_CONFIG=json.dumps(conf))
        argv = ["run", "train.strategy=multi_worker", "train.peer_timeout=3"]
        done = subprocess.run(
            [sys.executable, "-m", "tfopt", *argv, "--out", str(tmp_path / "r")],
            capture_output=True, text=True, env=env, timeout=900,
        )  # fmt: skip
    assert done.returncode == 128 + signal.SIGALRM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "tfopt run: error: timed out during the multi_worker strategy joining TF_CONFIG's "
        "cluster: a task of TF_CONFIG's cluster listens but did not join within 3 s "
        "(train.peer_timeout); start every task of the cluster with the same program, or check "
        "its addresses"
    )


def test_the_guard_kills_a_command_deaf_to_sigterm(monkeypatch):
    """A command stuck in native code cannot run its SIGTERM handler: the guard's SIGTERM is
    followed by SIGKILL, so that `timeout N tfopt ...` ends."""
    import threading

    from tfopt import _guard

    monkeypatch.setattr(_guard, "KILL_AFTER_S", 0.5)
    deaf = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    deaf += "print(1, flush=True); time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", deaf], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "1\n"  # its SIGTERM is ignored from here on
        stopped = threading.Event()
        _guard._stop(child, stopped)
        assert child.wait(timeout=300) == -signal.SIGKILL and stopped.is_set()
    finally:
        if child.poll() is None:
            child.kill()


def test_a_replica_that_stalls_while_starting_is_one_error_within_its_timeout(tmp_path):
    """The parent used to hand each replica its share through the start pipe: a replica that
    stalled before reading it left the parent in a pipe write, where no timeout fired."""
    script = tmp_path / "stall.py"
    script.write_text(
        "import numpy as np\n"
        "from _serve_helpers import StallsOnLoad  # a replica sleeps 120 s unpickling it\n"
        "from tfopt.bench import load_test\n"
        "x = np.zeros((50000, 3), 'float32')  # 600 KB: more than a pipe holds\n"
        "try:\n"
        "    load_test(StallsOnLoad(), x, clients=2, processes=2, start_timeout_s=2)\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert "error: load-test process 1 of 2 sent nothing for 2 s" in done.stdout, done.stderr
    with pytest.raises(ValueError, match="start_timeout_s must be a finite number"):
        from tfopt.bench._serve import load_test

        load_test(object(), np.zeros((1, 3)), start_timeout_s=float("nan"))
