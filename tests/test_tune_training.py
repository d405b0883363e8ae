"""tfopt tune / tfopt.tune.search_training: the training search, its outputs, resume, bad input,
the distributed search on loopback, and the training options of `tfopt run` it writes."""

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
from _helpers import shifted_npz

keras_tuner = pytest.importorskip("keras_tuner")

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, **tune) -> Path:
    """A tiny 3-class 1-D task (shift-separable) and a 1-epoch random search over it."""
    shifted_npz(tmp_path / "tiny.npz")
    space = {
        "width": [4, 6],
        "depth": 2,
        "dense": 8,
        "batch_size": 32,
        "optimizer": ["adam", "adamw"],
        "shift": 2,
        "noise": 0.1,
        "mixup": 0.0,
        "early_stopping": 0,
    }
    cfg = {
        "name": "tiny",
        "data": {"name": str(tmp_path / "tiny.npz"), "val_fraction": 0.2},
        "model": {"name": "mnist1d_cnn"},
        "train": {"epochs": 1, "batch_size": 32},
        "export": {"formats": ["tflite"], "representative_samples": 16},
        "bench": {"runs": 3, "warmup": 1},
        "tune": {"algorithm": "random", "max_epochs": 1, "space": {**space, **tune}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_search_resumes_and_writes_a_model_without_augmentation_a_replayable_config_and_a_report(
    tmp_path,
):
    import tfopt
    from tfopt import config, models
    from tfopt._pipeline import run
    from tfopt.tune import _search_training as st

    path = _config(tmp_path)

    def crash(record):  # the process dies while trial 1 is running (after its model was saved)
        if record["trial_id"] == "1":
            raise SystemExit("killed")  # not an Exception: KerasTuner does not catch it

    cfg, _ = st._load_config(path)
    data, hm = st.prepare(cfg)
    with st.claim(cfg, tmp_path / "s"), pytest.raises(SystemExit):
        st.make_tuner(cfg, hm, tmp_path / "s", max_trials=2, on_trial_done=crash).search(data)
    oracle = json.loads((tmp_path / "s" / "search" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {"tuner0": "1"} and oracle["end_order"] == ["0"]
    first = (tmp_path / "s" / "search" / "trial_0" / "tfopt.json").read_text()

    # resumed: trial 0 is kept, trial 1 runs again, no third trial
    res = tfopt.tune.search_training(path, out_dir=tmp_path / "s", max_trials=2)
    assert [t["trial_id"] for t in res.trials] == ["0", "1"]
    assert (tmp_path / "s" / "search" / "trial_0" / "tfopt.json").read_text() == first
    oracle = json.loads((tmp_path / "s" / "search" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1"]
    assert {t["values"]["width"] for t in res.trials} <= {4, 6}
    best = res.best
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in res.trials)
    # the saved model has no augmentation layers and is deterministic at inference
    model = models.load(res.model_path)
    names = [type(layer).__name__ for layer in model._flatten_layers()]
    assert not {"RandomShift1D", "GaussianNoise", "RandomScale"} & set(names), names
    x = np.ones((4, 16, 1), "float32")
    np.testing.assert_array_equal(model(x), model(x))
    # the run config pins the trial's training settings and model options
    cfg = config.load(res.config_path)
    assert cfg.train.augment.shift == 2 and cfg.train.augment.noise == 0.1
    assert cfg.train.optimizer == best["values"]["optimizer"]
    assert cfg.model.options == {
        "width": best["values"]["width"],
        "depth": 2,
        "dense": 8,
        "dropout": round(best["values"]["dropout"], 6),
        "l2": best["values"]["l2"],
    }
    assert "tune" not in yaml.safe_load(res.config_path.read_text())
    # report: trial table, TensorBoard hparams runs (one per trial)
    text = res.report["markdown"].read_text()
    assert "| trial | val acc | test acc |" in text and "optimizer" in text
    tb = tmp_path / "s" / "search" / "tensorboard"
    assert sorted(p.name for p in tb.glob("trial_*")) == ["trial_0", "trial_1"]
    # `tfopt run` replays it: same seed, same data, same trainer -> the trial's test accuracy
    report = run(cfg, out_dir=tmp_path / "replay", verbose=0)
    baseline = next(r for r in report["results"] if r["format"] == "keras")
    assert abs(baseline["accuracy"] - best["test_accuracy"]) <= 1 / 30 + 1e-6  # <= 1 of 30


def test_space_overrides_fixed_choice_and_range():
    from tfopt.tune import TrainingHyperModel

    hm = TrainingHyperModel(
        "mnist1d_cnn",
        input_shape=(40, 1),
        num_classes=10,
        space={
            "optimizer": "sgd",
            "batch_size": [16, 32],
            "learning_rate": {"min": 1e-3, "max": 1e-1, "sampling": "log"},
            "width": {"min": 8, "max": 32, "step": 8},
            "momentum": [0.8, 0.95],
        },
        max_epochs=7,
    )
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds["optimizer"] == "Fixed" and kinds["batch_size"] == "Choice"
    assert kinds["learning_rate"] == "Float" and kinds["width"] == "Int"
    assert kinds["epochs"] == "Fixed" and hp.get("epochs") == 7
    assert "flip" not in kinds and "shift" in kinds  # 1-D input: shifts, no flips
    train = hm.train_config(hp, epochs=3)
    assert (train.optimizer, train.epochs, train.momentum) == ("sgd", 3, 0.8)
    assert hm.model_options(hp)["width"] == 8
    image = TrainingHyperModel("digits_cnn", input_shape=(8, 8, 1), num_classes=10)
    assert {"flip", "crop"} <= set(image.names()) and "shift" not in image.names()


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.space.optimizer=adamx", "tune.space: optimizer: Input should be 'adam', 'adamw'"),
        (
            "tune.space.optimiser=adam",
            "unknown hyperparameter 'optimiser' (did you mean 'optimizer'?)",
        ),
        ("tune.space.flip=true", "unknown hyperparameter 'flip'"),
        ("train.optimizer=adamx", "train.optimizer: Input should be 'adam', 'adamw' or 'sgd'"),
        ("tune.space.learning_rate={min: 0.1, max: 0.01}", "min must be <= max"),
        (
            "tune.algorithm=grid",
            "tune.algorithm: Input should be 'hyperband', 'bayesian' or 'random'",
        ),
    ],
)
def test_bad_input_is_one_line_before_training(tmp_path, capsys, override, message):
    from tfopt.cli import main

    code = main(["tune", str(_config(tmp_path)), "--out", str(tmp_path / "s"), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err, err
    assert not (tmp_path / "s" / "search").exists()  # nothing ran


def test_overwrite_never_deletes_a_directory_tfopt_did_not_create(tmp_path, capsys):
    from tfopt.cli import main

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.txt").write_text("x")
    code = main(["tune", str(_config(tmp_path)), "--out", str(tmp_path / "d"), "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "was not created by tfopt" in err and "\n" not in err, err
    assert (tmp_path / "d" / "thesis.txt").read_text() == "x"


def test_augmentation_on_the_wrong_input_is_an_error():
    from tfopt._training import augmentation_layers
    from tfopt.config._train import AugmentConfig

    with pytest.raises(ValueError, match=r"train.augment.flip is for images .* shape \(40, 1\)"):
        augmentation_layers(AugmentConfig(flip=True), (40, 1))
    with pytest.raises(ValueError, match=r"train.augment.shift is for 1-D signals"):
        augmentation_layers(AugmentConfig(shift=2), (8, 8, 1))


def test_augmentation_layers_act_only_in_training():
    import keras

    from tfopt._training import RandomScale, RandomShift1D

    x = np.arange(2 * 6, dtype="float32").reshape(2, 6, 1) + 1.0
    shift = RandomShift1D(2, seed=1)
    np.testing.assert_array_equal(shift(x, training=False), x)
    y = np.asarray(shift(x, training=True))[..., 0]
    for row, orig in zip(y, x[..., 0]):  # a zero-padded shift of the row by -2..2 samples
        assert any(
            np.array_equal(row, np.pad(orig, (max(k, 0), max(-k, 0)))[max(-k, 0) : 6 + max(-k, 0)])
            for k in range(-2, 3)
        ), row
    scale = RandomScale(0.2, seed=1)
    ratio = np.asarray(scale(x, training=True)) / x
    assert np.allclose(ratio, ratio[:, :1]) and ((ratio > 0.8 - 1e-6) & (ratio < 1.2 + 1e-6)).all()
    restored = keras.layers.deserialize(keras.layers.serialize(shift))
    assert restored.max_shift == 2


def test_training_options_schedule_and_optimizer():
    from tfopt._training import learning_rate, optimizer
    from tfopt.config._schema import TrainConfig

    t = TrainConfig(
        optimizer="sgd",
        momentum=0.8,
        lr_schedule="cosine",
        warmup_epochs=1,
        learning_rate=0.1,
        weight_decay=1e-4,
    )
    sched = learning_rate(t, steps_per_epoch=10, epochs=5)
    assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(0.1)  # warmed up
    assert float(sched(50)) == pytest.approx(0.001, rel=1e-3)  # cosine down to 1%
    opt = optimizer(t, 0.1)
    assert type(opt).__name__ == "SGD" and opt.momentum == 0.8 and opt.nesterov
    assert opt.weight_decay == pytest.approx(1e-4)
    assert learning_rate(TrainConfig(learning_rate=0.01), 10, 5) == 0.01


def test_worker_that_cannot_reach_the_chief_fails_in_one_line(tmp_path, capsys):
    from tfopt.cli import main
    from tfopt.tune._distributed import free_port

    port = free_port()
    code = main(
        [
            "tune",
            str(_config(tmp_path)),
            "--chief",
            f"127.0.0.1:{port}",
            "--connect-timeout",
            "1",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    # the error echoes the timeout it waited for: --connect-timeout's 1 s, not the default 10 s
    assert f"cannot reach the search chief at 127.0.0.1:{port} within 1 s" in err
    assert main(["tune", "--chief", "nohost"]) == 1
    assert "--chief must be HOST:PORT" in capsys.readouterr().err


def test_children_die_with_their_parent(tmp_path):
    """The launcher's children (chief, workers) get SIGKILL when the parent is killed -9."""
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tfopt.tune._distributed import _spawn\n"
        "p = _spawn([sys.executable, '-c', 'import time; time.sleep(120)'], {})\n"
        "print(p.pid, flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 600  # a guard against hanging, not a speed bound
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:  # reaped by init, or a zombie of ours: read its state
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
            if state == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_distributed_search_two_workers_on_loopback(tmp_path):
    path = _config(tmp_path)
    out = tmp_path / "d"
    from tfopt.cli import main

    # the parent runs here (TensorFlow already imported); the chief and 2 workers are processes
    assert main(["tune", str(path), "--workers", "2", "--max-trials", "2", "--out", str(out)]) == 0
    trials = json.loads((out / "report.json").read_text())["trials"]
    assert sorted(t["trial_id"] for t in trials) == ["0", "1"]
    assert {t["tuner_id"] for t in trials} <= {"tuner0", "tuner1"}
    assert (out / "best.keras").exists() and (out / "best.yaml").exists()
    oracle = json.loads((out / "search" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and len(oracle["start_order"]) == 2


def test_importance_is_the_share_of_variance_a_hyperparameter_explains():
    from tfopt.tune._search_training import importance

    trials = [
        {"val_accuracy": acc, "values": {"opt": opt, "bs": bs, "same": 1, "tuner/epochs": 2}}
        for acc, opt, bs in [(0.9, "a", 32), (0.9, "a", 64), (0.5, "b", 32), (0.5, "b", 64)]
    ]
    scores = importance(trials)
    assert scores == {"opt": 1.0, "bs": 0.0}  # "same" never varies; tuner/* is KerasTuner's
    assert importance(trials[:2]) == {}  # too few trials to say


def test_fit_with_mixup_label_smoothing_and_early_stopping(tiny_data):
    from tfopt import models
    from tfopt._training import fit
    from tfopt.config._schema import TrainConfig
    from tfopt.data import from_arrays

    x, y = tiny_data
    data = from_arrays(x, y, x_test=x, y_test=y, val_fraction=0.25)
    model = models.get("mnist1d_cnn", input_shape=(40, 1), num_classes=10, width=4, dense=8)
    train = TrainConfig(
        epochs=3,
        batch_size=16,
        label_smoothing=0.1,
        early_stopping=1,
        augment={"mixup": 0.2, "scale": 0.1},
    )
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(model, train, data)
    # the mixup pipeline shuffles itself: no "shuffle=True ... will be ignored" from Keras
    assert not [w for w in caught if "shuffle" in str(w.message)]
    assert 2 <= len(history.history["val_accuracy"]) <= 3  # patience 1 may stop after 2
    assert model.evaluate(x, y, verbose=0)[1] >= 0.0  # compiled for integer labels again
    assert not any(layer.name.startswith("aug_") for layer in model.layers)


def test_transfer_is_searched_and_replayed(tmp_path):
    """With a transfer: section the space holds freeze_until / unfreeze_at_epoch (not the
    builder's options); a trial trains frozen layers frozen; best.yaml carries the choice."""
    import tfopt
    from tfopt.errors import ConfigError

    source = tfopt.models.get("mnist1d_cnn", input_shape=(16, 1), num_classes=5, width=4, dense=8)
    source.save(tmp_path / "source.keras")
    path = _config(tmp_path, freeze_until=["conv2"], unfreeze_at_epoch=[-1], epochs=2)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"path": str(tmp_path / "source.keras")}
    raw["transfer"] = {"head": "new"}
    for key in ("width", "depth", "dense"):  # a transferred model has no builder options
        del raw["tune"]["space"][key]
    path.write_text(yaml.safe_dump(raw))
    res = tfopt.tune.search_training(str(path), out_dir=tmp_path / "t", max_trials=1)
    (trial,) = res.trials
    assert trial["transfer"] == {"freeze_until": "conv2", "unfreeze_at_epoch": None, "head": "new"}
    assert trial["epochs_trained"] == 2
    model = tfopt.models.load(res.model_path)
    assert model.output_shape == (None, 3)  # the new head: the task's 3 classes
    for name in ("conv1", "conv2"):  # frozen for the whole fit
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.get_layer("fc1").kernel, source.get_layer("fc1").kernel)
    best = yaml.safe_load(res.config_path.read_text())
    assert best["transfer"] == trial["transfer"] and best["model"]["path"] == raw["model"]["path"]

    raw["tune"]["space"]["freeze_until"] = ["conv9"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"tune.space: freeze_until must name a layer .*conv2"):
        tfopt.tune.search_training(str(path), out_dir=tmp_path / "bad", max_trials=1)
    assert not (tmp_path / "bad").exists()


def test_local_workers_share_the_cores_and_keep_the_users_thread_settings(monkeypatch):
    from tfopt.tune import _distributed as dist

    class Proc:  # the chief runs until stopped; a worker exits at once
        def __init__(self, cmd, env):
            self.pid, self.env, self.chief = 1, env, "--serve" in cmd
            self.returncode = None if self.chief else 0

        def poll(self):
            return self.returncode

        def terminate(self):
            self.returncode = -15

        def wait(self, timeout=None):
            return self.returncode

    spawned = []
    monkeypatch.setattr(
        dist, "_spawn", lambda cmd, env: spawned.append(Proc(cmd, env)) or spawned[-1]
    )
    monkeypatch.setattr(dist, "check_reachable", lambda *a, **k: None)
    monkeypatch.setattr(dist, "_cores", lambda: 4)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")
    assert dist.launch(["cfg.yaml"], workers=3) == 0
    workers = [p.env for p in spawned if not p.chief]
    assert [w["KERASTUNER_TUNER_ID"] for w in workers] == ["tuner0", "tuner1", "tuner2"]
    assert {(w["TF_NUM_INTRAOP_THREADS"], w["TF_NUM_INTEROP_THREADS"]) for w in workers} == {
        ("1", "3")
    }
    assert dist.thread_environment(1)["TF_NUM_INTRAOP_THREADS"] == "4"
    assert dist.thread_environment(2)["TF_NUM_INTRAOP_THREADS"] == "2"
