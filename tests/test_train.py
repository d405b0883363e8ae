"""tfopt.train: tf.distribute strategies (real, in subprocesses), transfer learning, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import child_env

from tfopt import config, train
from tfopt.errors import ConfigError

keras = pytest.importorskip("keras")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_distributed.py"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# -- distributed training ------------------------------------------------------------------------
def test_mirrored_two_logical_devices_prune_qat_distill(tmp_path):
    out = tmp_path / "mirrored.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "mirrored", str(out)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["replicas"] == 2
    assert r["baseline_distributed"] == "MirroredVariable"
    assert r["prune_sparsity"] == 0.5 and r["prune_in_sync"]
    # QAT activation ranges: every replica holds the same (averaged) range
    assert r["qat_ranges"] == 6 and r["qat_range_spread"] == 0.0 and r["qat_in_sync"]
    assert r["distill_in_sync"] and r["distill_distributed"] == "MirroredVariable"
    assert r["tflite_agreement"] >= 0.97


def test_multi_worker_two_processes_on_loopback(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), "multi_worker", str(tmp_path / f"w{i}.json")],
                env=child_env(TF_CONFIG=tf_config),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errs = [p.communicate(timeout=1800)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    r0, r1 = (json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2))
    assert r0["replicas"] == r1["replicas"] == 2
    assert (r0["worker"], r1["worker"]) == (True, False)  # worker 0 is the chief
    # the workers trained one model: identical weights after the synchronized epoch
    for a, b in zip(r0["weights"], r1["weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strategy_errors_are_one_line(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable") as e:
        train.make_strategy("multi_worker")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"strategy must be one of .*Received: strategy='tpu'"):
        train.make_strategy("tpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        train.check_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {}}))
    with pytest.raises(ValueError, match="TF_CONFIG task must name one of the cluster's tasks"):
        train.check_strategy("multi_worker")
    with pytest.raises(ConfigError, match=r"train\.strategy: Input should be"):
        config.validate({"train": {"strategy": "mirored"}})
    assert config.validate({"train": {"strategy": "mirrored"}}).train.strategy == "mirrored"


def test_run_without_tf_config_fails_before_training(tmp_path, monkeypatch, capsys):
    from tfopt.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    rc = main(["run", "train.strategy=multi_worker", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err.startswith("tfopt: config error: train.strategy: strategy='multi_worker' needs")
    assert not (tmp_path / "r").exists()  # nothing ran


# -- transfer learning ---------------------------------------------------------------------------
def _base(activation=None):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation=activation, name="head")(x))


def test_transfer_new_head_freeze_and_copy_policy():
    base = _base("softmax")
    before = [w.copy() for w in base.get_weights()]
    model = train.transfer(base, num_classes=3, freeze_until="fc1")
    assert model.output_shape == (None, 3)
    assert model.get_layer("head").get_config()["activation"] == "softmax"
    assert model.transfer_frozen == ["fc1"]
    assert not model.get_layer("fc1").trainable and model.get_layer("fc2").trainable
    # copied weights, new layer objects; the user's model untouched
    np.testing.assert_array_equal(model.get_layer("fc2").kernel.numpy(), before[2])
    assert all(layer not in base.layers for layer in model.layers)
    assert all(layer.trainable for layer in base.layers)
    x = np.random.RandomState(0).randn(64, 6).astype("float32")
    y = np.arange(64) % 3
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(model.get_layer("fc1").kernel.numpy(), before[0])  # frozen
    assert not np.array_equal(model.get_layer("fc2").kernel.numpy(), before[2])  # trained
    for a, b in zip(base.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_fit_transfer_unfreezes_at_epoch():
    model = train.transfer(_base(), num_classes=2, freeze_until="fc2")
    x = np.random.RandomState(1).randn(32, 6).astype("float32")
    y = np.arange(32) % 2
    seen = []

    def fit(m, *, initial_epoch, epochs):
        trainable = [layer.name for layer in m.layers if layer.trainable and layer.weights]
        seen.append((initial_epoch, epochs, trainable))
        m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
        return m.fit(x, y, initial_epoch=initial_epoch, epochs=epochs, verbose=0)

    histories = train.fit_transfer(model, fit, epochs=3, unfreeze_at_epoch=2)
    assert seen == [(0, 2, ["head"]), (2, 3, ["fc1", "fc2", "head"])]
    assert [len(h.history["loss"]) for h in histories] == [2, 1]
    kept = train.transfer(_base(), head="keep", freeze_until="fc2")
    assert kept.output_shape == (None, 4) and kept.transfer_frozen == ["fc1", "fc2"]


def test_transfer_errors():
    base = _base()
    with pytest.raises(ValueError, match=r"Close names: \['fc2', 'fc1'\].*freeze_until='fc3'"):
        train.transfer(base, num_classes=3, freeze_until="fc3")
    with pytest.raises(ValueError, match="head='keep' keeps the model's 4-class output"):
        train.transfer(base, num_classes=3, head="keep")
    with pytest.raises(ValueError, match=r"head must be one of \['new', 'keep'\]"):
        train.transfer(base, head="replace")
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3), keras.layers.Softmax()])
    with pytest.raises(ValueError, match="ends in Softmax"):
        train.transfer(seq, num_classes=2)
    with pytest.raises(ConfigError, match=r"transfer\.head: Input should be 'new' or 'keep'"):
        config.validate({"transfer": {"head": "fresh"}})


def test_run_transfer_unknown_layer_fails_before_training(tmp_path, capsys):
    from tfopt.cli import main

    rc = main(["run", "transfer.freeze_until=conv9", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "transfer: freeze_until must name a layer of the model 'mnist1d_cnn'" in err
    assert "'conv1'" in err and not (tmp_path / "r" / "baseline.keras").exists()


# -- ensembles -----------------------------------------------------------------------------------
def test_ensemble_teacher_is_the_mean_of_member_probabilities():
    from tfopt.distill import Distiller
    from tfopt.distill._distiller import ends_in_softmax

    x = np.random.RandomState(2).randn(64, 6).astype("float32")
    y = np.arange(64) % 4

    def build():  # members built alike share one name
        model = _base(None)
        model.name = "same"
        return model

    members = train.train_ensemble(build, lambda m: None, members=2, seed=5)
    members.append(_base("softmax"))  # a softmax member: used as it is, not softmaxed twice
    teacher = train.ensemble_model(members)
    assert ends_in_softmax(teacher) and not teacher.trainable
    logits = [m.predict(x, verbose=0) for m in members[:2]]
    probs = [np.exp(z) / np.exp(z).sum(-1, keepdims=True) for z in logits]
    probs.append(members[2].predict(x, verbose=0))
    np.testing.assert_allclose(teacher.predict(x, verbose=0), np.mean(probs, axis=0), atol=1e-6)
    # member seeds differ
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])
    acc = train.ensemble_accuracy(members, x, y)
    assert acc["ensemble"] == float(np.mean(np.mean(probs, axis=0).argmax(-1) == y))
    assert acc["best_member"] == max(acc["members"])
    before = teacher.get_weights()
    student = _base(None)
    d = Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.1)
    d.compile(optimizer="adam", metrics=["accuracy"])
    d.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for a, b in zip(teacher.get_weights(), before):  # the teacher stays frozen
        np.testing.assert_array_equal(a, b)


def test_ensemble_errors():
    with pytest.raises(ValueError, match="at least 2 members. Received: 1"):
        train.ensemble_model([_base()])
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="must share input and output shapes"):
        train.ensemble_model([_base(), other])
    with pytest.raises(ValueError, match=r"members must be >= 2. Received: members=1"):
        train.train_ensemble(_base, lambda m: None, members=1)
