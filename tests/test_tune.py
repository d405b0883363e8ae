"""tfopt.tune: search space, trials measured through the artifact, failures, resume, hparams, distributed."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import child_env, random_mnist1d

keras_tuner = pytest.importorskip("keras_tuner")


# A builder whose width=8 model uses erfinv, which TFLite cannot convert: its trials must fail.
BUILDER_SRC = textwrap.dedent(
    """
    import keras

    class ErfInv(keras.layers.Layer):
        def call(self, x):
            return keras.ops.erfinv(keras.ops.tanh(x) * 0.5)

    def builder(width=16, dense=16):
        inputs = keras.Input((40, 1))
        x = keras.layers.Conv1D(width, 5, strides=2, activation="relu")(inputs)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(dense, activation="relu")(x)
        if width == 8:
            x = ErfInv()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x))
    """
)
_ns: dict = {}
exec(BUILDER_SRC, _ns)
builder = _ns["builder"]


def test_score_is_exact():
    import tfopt

    m = {"val_accuracy": 0.88, "gzip_bytes": 1024, "latency_ms": 0.5}
    assert tfopt.tune.score(m, "size") == -10.0
    assert tfopt.tune.score(m, "latency") == 1.0
    assert tfopt.tune.score(m, "accuracy", size_weight=0.01) == pytest.approx(0.88 - 0.1)
    # 1.5 points over a 0.5-point budget costs 1 + 100 * 0.015 = 2.5
    over = tfopt.tune.score(m, "size", baseline_accuracy=0.90, max_accuracy_drop=0.005)
    assert over == pytest.approx(-12.5)
    inside = tfopt.tune.score(m, "size", baseline_accuracy=0.884, max_accuracy_drop=0.005)
    assert inside == -10.0
    with pytest.raises(ValueError, match="Unrecognized objective='speed'"):
        tfopt.tune.score(m, "speed")
    with pytest.raises(ValueError, match="needs baseline_accuracy"):
        tfopt.tune.score(m, "size", max_accuracy_drop=0.01)


def test_hypermodel_space_and_build():
    import tfopt

    hm = tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", techniques=("prune", "quantize"))
    assert hm.hyperparameter_names() == [
        "learning_rate", "batch_size", "dropout", "l2", "width", "dense",
        "sparsity", "schedule", "prune_scope", "quantization", "weight_bits", "ft_epochs",
        "ft_learning_rate",
    ]  # fmt: skip
    hm = tfopt.tune.CompressionHyperModel(
        builder="mnist1d_cnn", techniques=(), space={"width": 8, "dense": [16, 24], "dropout": 0.2}
    )
    hp = keras_tuner.HyperParameters()
    model = hm.build(hp)
    assert hp.values["width"] == 8 and hp.values["dense"] == 16 and hp.values["dropout"] == 0.2
    assert model.get_layer("conv1").filters == 8
    assert model.get_layer("fc1").units == 16
    assert model.get_layer("dropout").rate == 0.2
    assert model.optimizer is not None  # compiled with the tuned learning rate
    with pytest.raises(ValueError, match=r"Unknown hyperparameter\(s\) \['depth'\]"):
        tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", space={"depth": [1, 2]})
    with pytest.raises(ValueError, match="Unrecognized technique 'magic'"):
        tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", techniques=("magic",))
    with pytest.raises(ValueError, match="Unrecognized target='onnx'"):
        tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", target="onnx")
    with pytest.raises(ValueError, match="Unrecognized kind='grid'"):
        tfopt.tune.create_tuner(hm, kind="grid")
    with pytest.raises(ValueError, match="seeds= is not supported with kind='hyperband'"):
        tfopt.tune.create_tuner(hm, kind="hyperband", seeds=[{"width": 8}])


def test_failed_export_is_a_failed_trial_and_search_goes_on(tmp_path):
    """Seeds run width=8 (erfinv: no TFLite conversion) then width=16; metrics come from the file."""
    import tensorflow as tf

    import tfopt

    train, val = random_mnist1d(96), random_mnist1d(64, seed=1)
    hm = tfopt.tune.CompressionHyperModel(
        builder=builder, techniques=(), target="tflite", space={"width": [8, 16], "batch_size": 32}
    )
    tuner = tfopt.tune.create_tuner(
        hm, kind="random", max_trials=2, seeds=[{"width": 8}, {"width": 16}],
        directory=str(tmp_path), project_name="p", epochs=1, objective="accuracy", size_weight=0.01,
    )  # fmt: skip
    tuner.search(train, val, verbose=0)
    trials = tuner.oracle.trials
    assert [trials[t].status for t in sorted(trials)] == ["FAILED", "COMPLETED"]
    assert "export to tflite failed" in trials["0"].message
    records = tuner.records()
    assert [r["status"] for r in records] == ["FAILED", "COMPLETED"]
    m = records[1]["metrics"]
    art = tuner.artifact_path(trials["1"])
    assert m["val_accuracy"] == tfopt.bench.evaluate(str(art), val)
    assert m["gzip_bytes"] == tfopt.bench.file_sizes(art)["gzip_bytes"]
    assert trials["1"].score == pytest.approx(tfopt.tune.score(m, "accuracy", size_weight=0.01))
    assert tuner.load_model(trials["1"]).get_layer(index=1).filters == 16

    # TensorBoard: the experiment config and the completed trial, as hparams-plugin summaries
    plugins, scalars = set(), {}
    for path in tuner.log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                plugins.add(v.metadata.plugin_data.plugin_name)
                if v.tag in ("val_accuracy", "gzip_bytes"):
                    scalars[v.tag] = float(tf.make_ndarray(v.tensor))
    assert "hparams" in plugins
    assert scalars["val_accuracy"] == pytest.approx(m["val_accuracy"])
    assert scalars["gzip_bytes"] == m["gzip_bytes"]


def test_hyperband_runs_and_bayesian_builds(tmp_path):
    import tfopt

    train, val = random_mnist1d(64), random_mnist1d(32, seed=1)
    hm = tfopt.tune.CompressionHyperModel(
        builder="mnist1d_cnn",
        techniques=(),
        target="tflite",
        space={"width": [4, 8], "dense": 8, "batch_size": 32},
    )
    hb = tfopt.tune.create_tuner(
        hm, kind="hyperband", max_epochs=2, directory=str(tmp_path), project_name="hb"
    )
    assert isinstance(hb.oracle, keras_tuner.oracles.HyperbandOracle)
    hb.search(train, val, verbose=0)
    done = [t for t in hb.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(done) >= 2
    assert {t.hyperparameters.values["tuner/epochs"] for t in done} <= {1, 2}
    bo = tfopt.tune.create_tuner(
        hm, kind="bayesian", max_trials=2, directory=str(tmp_path), project_name="bo"
    )
    assert isinstance(bo.oracle, tfopt.tune.SeededBayesianOptimizationOracle)


SEARCH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tfopt

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40, 1)).astype("float32")
    y = rng.integers(0, 10, size=64).astype("int32")
    directory, max_trials = sys.argv[1], int(sys.argv[2])
    kill_after = int(os.environ.get("KILL_AFTER_TRIALS", "0"))
    done = []

    def on_done(trial_id, record):
        done.append(trial_id)
        print("DONE", trial_id, record["status"], flush=True)

    hm = tfopt.tune.CompressionHyperModel(
        builder="mnist1d_cnn", techniques=(), target="tflite",
        space={"width": [4, 8, 12, 16], "dense": [8, 16, 24], "batch_size": 32})
    if kill_after:
        build = hm.build

        def build_or_die(hp):  # killed in the middle of the next trial
            if len(done) >= kill_after:
                print("KILLING", flush=True)
                os.kill(os.getpid(), 9)
            return build(hp)

        hm.build = build_or_die
    tuner = tfopt.tune.create_tuner(
        hm, kind=os.environ.get("KIND", "random"), max_trials=max_trials, directory=directory,
        project_name="p", epochs=1, on_trial_done=on_done)
    tuner.search((x, y), (x[:32], y[:32]), verbose=0)
    print("FINISHED", os.environ.get("KERASTUNER_TUNER_ID", ""), len(done), flush=True)
    """
)


@pytest.mark.slow
def test_search_resumes_after_the_process_is_killed(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SEARCH_SCRIPT)
    d = str(tmp_path / "s")
    first = subprocess.run(
        [sys.executable, str(script), d, "3"],
        capture_output=True,
        text=True,
        env=child_env(OMP_NUM_THREADS="1", KILL_AFTER_TRIALS="1"),
        timeout=1800,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert "DONE 0 COMPLETED" in first.stdout and "KILLING" in first.stdout
    assert "FINISHED" not in first.stdout
    oracle = json.loads((tmp_path / "s" / "p" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {"tuner0": "1"}  # killed while trial 1 was running
    record0 = (tmp_path / "s" / "p" / "trial_0" / "tfopt.json").read_text()

    second = subprocess.run(
        [sys.executable, str(script), d, "3"],
        capture_output=True,
        text=True,
        env=child_env(OMP_NUM_THREADS="1"),
        timeout=1800,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Reloading Tuner" in second.stdout
    assert "DONE 0" not in second.stdout  # trial 0 is not run again
    assert "DONE 1 COMPLETED" in second.stdout and "DONE 2 COMPLETED" in second.stdout
    assert "FINISHED  2" in second.stdout
    assert (tmp_path / "s" / "p" / "trial_0" / "tfopt.json").read_text() == record0
    oracle = json.loads((tmp_path / "s" / "p" / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1", "2"]


@pytest.mark.slow
def test_distributed_chief_and_worker_on_loopback(tmp_path):
    from tfopt.tune._distributed import free_port

    script = tmp_path / "search.py"
    script.write_text(SEARCH_SCRIPT)
    d = str(tmp_path / "dist")
    net = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(free_port()))
    chief = subprocess.Popen(
        [sys.executable, str(script), d, "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(OMP_NUM_THREADS="1", KERASTUNER_TUNER_ID="chief", **net),
    )
    try:
        time.sleep(3)  # the worker retries until the chief serves; this only avoids a busy wait
        worker = subprocess.run(
            [sys.executable, str(script), d, "2"],
            capture_output=True,
            text=True,
            env=child_env(OMP_NUM_THREADS="1", KERASTUNER_TUNER_ID="tuner0", **net),
            timeout=1800,
        )
        out, err = chief.communicate(timeout=1800)
    finally:
        if chief.poll() is None:
            chief.kill()
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert chief.returncode == 0, err[-2000:]
    assert "DONE 0 COMPLETED" in worker.stdout and "DONE 1 COMPLETED" in worker.stdout
    assert "FINISHED tuner0 2" in worker.stdout
    assert "DONE" not in out and "FINISHED chief 0" in out  # the chief only serves the oracle
    oracle = json.loads((tmp_path / "dist" / "p" / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1"]


def test_seeded_bayesian_oracle_proposes_seeds_then_refines(tmp_path):
    import tfopt

    class Quadratic(keras_tuner.Tuner):
        def run_trial(self, trial, **kwargs):
            x = trial.hyperparameters.Float("x", -2.0, 2.0)
            return {"score": -((x - 1.0) ** 2)}

    space = keras_tuner.HyperParameters()
    space.Float("x", -2.0, 2.0)
    oracle = tfopt.tune.SeededBayesianOptimizationOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=10, num_initial_points=3,
        seeds=[{"x": -1.5}, {"x": 5.0}], seed=0, hyperparameters=space,
    )  # fmt: skip
    tuner = Quadratic(oracle=oracle, directory=str(tmp_path), project_name="q")
    tuner.search(verbose=0)
    xs = [oracle.trials[t].hyperparameters.values["x"] for t in oracle.start_order]
    assert len(xs) == 10 and len(set(xs)) == 10
    assert xs[0] == -1.5  # the seed, as given
    assert xs[1] == -2.0  # 5.0 is outside [-2, 2]: the default (the minimum) is used instead
    best = oracle.get_best_trials(1)[0].hyperparameters.values["x"]
    assert abs(best - 1.0) < 0.2


def test_recipe_steps_are_tfopt_run_steps():
    """A point of the search space becomes `tfopt run` step configs (one engine runs both)."""
    import tfopt
    from tfopt.config import validate
    from tfopt.tune._recipe import dump_steps

    recipe = {"channel_ratio": 0.5, "channel_scope": "dense", "sparsity": 0.9,
              "schedule": "constant", "prune_scope": "large", "clusters": 0,
              "quantization": "qat", "distill": True, "temperature": 2.0, "alpha": 0.2,
              "epochs": 10, "learning_rate": 1e-3, "batch_size": 32}  # fmt: skip
    steps = tfopt.tune.recipe_steps(recipe, target="tflite-int8")
    assert [s.type for s in steps] == ["prune_channels", "prune", "qat"]
    channels, prune, qat = steps
    assert (channels.ratio, channels.steps, channels.epochs_per_step, channels.scope) == (
        0.5, 1, 5, "widest_dense"
    )  # fmt: skip
    assert (prune.target_sparsity, prune.schedule, prune.scope, prune.epochs) == (
        0.9, "constant", "large", 10
    )  # fmt: skip
    assert prune.end_fraction == 0.7 and prune.learning_rate == 1e-3
    assert (qat.epochs, qat.learning_rate, qat.preserve_sparsity) == (2, 5e-4, True)
    for s in steps:
        assert (s.lr_schedule, s.batch_size) == ("cosine", 32)
        assert (s.distill.temperature, s.distill.alpha) == (2.0, 0.2)
    assert tfopt.tune.describe(steps, "tflite-int8") == [
        "prune_channels(0.5,dense)", "prune(0.9,constant,large)", "qat", "distill(T=2)"
    ]  # fmt: skip
    # the dumped steps are a valid `tfopt run` config that gives the same steps back
    assert validate({"steps": dump_steps(steps)}).steps == steps

    clustered = tfopt.tune.recipe_steps({**recipe, "clusters": 16}, target="tflite-int8")
    assert [s.type for s in clustered] == ["prune_channels", "prune", "cluster"]  # then PTQ
    assert clustered[2].epochs == 2 and clustered[2].preserve_sparsity
    assert "ptq" in tfopt.tune.describe(clustered, "tflite-int8")
    assert [s.type for s in tfopt.tune.recipe_steps(recipe, target="tflite-float16")] == [
        "prune_channels", "prune"
    ]  # fmt: skip
    assert tfopt.tune.recipe_steps({}, target="tflite-int8") == []

    hm = tfopt.tune.CompressionHyperModel(builder="mnist1d_cnn", techniques=("prune", "quantize"))
    hp = keras_tuner.HyperParameters()
    hm.declare(hp)
    assert hm.steps(hp) == tfopt.tune.recipe_steps(hm.recipe(hp), target=hm.target)


def test_a_bug_in_a_trial_is_not_a_failed_export(tmp_path):
    """Only an export failure is a FailedTrialError; another exception is recorded as an error
    and reaches KerasTuner unchanged (INVALID, with its traceback)."""
    import tfopt

    train = random_mnist1d(32)
    hm = tfopt.tune.CompressionHyperModel(
        builder=builder, techniques=(), target="tflite", space={"width": 16, "batch_size": 32}
    )

    def broken(hp):
        raise TypeError("boom")

    hm.steps = broken
    tuner = tfopt.tune.create_tuner(
        hm, kind="random", max_trials=1, directory=str(tmp_path), project_name="p", epochs=0
    )
    tuner.search(train, train, verbose=0)
    (record,) = tuner.records()
    assert record["status"] == "ERROR" and record["error"] == "TypeError: boom"
    message = tuner.oracle.trials["0"].message
    assert "TypeError: boom" in message and "FailedTrialError" not in message


def test_step_context_compiles_softmax_models_and_applies_the_step_fine_tuning(tmp_path):
    """`ctx.compile` takes a softmax head as probabilities (it assumed logits), and `ctx.fit`
    applies the running step's fine-tuning keys: a cosine schedule and distillation."""
    import keras

    from tfopt._steps import StepContext
    from tfopt.config import validate_steps
    from tfopt.data import from_arrays

    x, y = random_mnist1d(64)
    data = from_arrays(x, y, x_test=x[:8], y_test=y[:8])
    inputs = keras.Input((40, 1))
    probs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    student = keras.Model(inputs, probs)
    teacher = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    ctx = StepContext(data=data, run_dir=tmp_path, baseline=teacher, verbose=0, tensorboard=False)
    ctx.compile(student, 1e-3)
    assert student.loss.from_logits is False
    ctx.compile(teacher, 1e-3)
    assert teacher.loss.from_logits is True

    student = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    (ctx.step,) = validate_steps(
        [{"type": "qat", "lr_schedule": "cosine", "batch_size": 16, "distill": {"alpha": 0.5}}]
    )
    history = ctx.fit(student, epochs=1, learning_rate=1e-3)
    assert history.model is not student and history.model.student is student  # a Distiller
    # cosine decay over the fit's steps, down to 5% at its last step
    assert int(history.model.optimizer.iterations) == -(-len(data.x_train) // 16)
    assert float(history.model.optimizer.learning_rate) == pytest.approx(5e-5, rel=1e-4)
    assert len(history.history["loss"]) == 1
    assert student.loss.from_logits is True  # compiled plainly again after distillation


class TinyNet(__import__("keras").Model):
    """A subclassed model (layers in a list and an attribute) for the copier test."""

    def __init__(self, **kwargs):
        import keras

        super().__init__(**kwargs)
        self.body = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(8)]
        self.head = keras.layers.Dense(3)

    def call(self, x, training=None):
        for layer in self.body:
            x = layer(x)
        return self.head(x)


def test_trial_models_are_copies_by_the_one_copier_subclassed_and_pruned():
    """`CompressionHyperModel.build` copies the user's model with the rewriter's `clone`: a
    subclassed model, a model holding pruning wrappers and a pruned subclassed model (wrappers in
    its attributes) come back with the same weights (and masks), and fitting the copy leaves the
    model as it was. (keras.models.clone_model could not copy the last: it looked the class up
    by its registered name.)"""
    import keras

    import tfopt
    from tfopt.tune import CompressionHyperModel

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    subclassed = TinyNet()
    subclassed(x)
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(inputs)))
    pruned = tfopt.prune.prune(plain, tfopt.prune.ConstantSparsity(0.5, frequency=1))
    pruned_subclassed = tfopt.prune.prune(
        subclassed, tfopt.prune.ConstantSparsity(0.5, frequency=1)
    )
    for model in (subclassed, pruned, pruned_subclassed):
        before = [w.copy() for w in model.get_weights()]
        copy = CompressionHyperModel(model, techniques=["prune"]).build(
            keras_tuner.HyperParameters()
        )
        assert type(copy) is type(model) and copy is not model
        assert not {id(v) for v in copy.weights} & {id(v) for v in model.weights}
        for a, b in zip(copy.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0))
        copy.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        copy.fit(x, y, epochs=1, verbose=0)
        assert any(not np.array_equal(a, b) for a, b in zip(copy.get_weights(), before))
        for a, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_search_candidate_and_tfopt_run_make_the_same_artifact(tmp_path, blobs):
    """One candidate runner (`tfopt.export.export_and_measure`): the same steps run as a search
    candidate (`run_candidate`) and as `tfopt run` give byte-identical artifacts and the same
    accuracy on the same test samples (lowrank with 0 epochs: no fit, nothing left to chance)."""
    import keras
    import yaml

    import tfopt
    from tfopt import config
    from tfopt._pipeline import run
    from tfopt.export._measure import correctness
    from tfopt.tune import run_candidate

    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = blobs(300, 1), blobs(120, 2)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    inputs = keras.Input((40, 1))
    h = keras.layers.Dense(24, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(24)(h)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)
    model.save(tmp_path / "m.keras")
    raw = {
        "name": "same", "seed": 4,
        "data": {"name": str(tmp_path / "d.npz"), "val_fraction": 0.2},
        "model": {"path": str(tmp_path / "m.keras")},
        "train": {"epochs": 0, "batch_size": 64},
        "steps": [{"type": "lowrank", "rank_ratio": 0.25, "epochs": 0}],
        "export": {"formats": ["tflite-int8"], "representative_samples": 100},
        "bench": {"runs": 2, "warmup": 1, "concurrency": []},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = config.load(tmp_path / "c.yaml")
    rows = run(cfg, out_dir=tmp_path / "run", verbose=0)["results"]
    row = next(r for r in rows if r["format"] == "tflite-int8")

    data = tfopt.data.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    _, metrics, facts = run_candidate(
        keras.models.load_model(tmp_path / "m.keras"), cfg.steps, train=data.train,
        val=data.test, out_dir=tmp_path / "cand", target="tflite-int8", seed=cfg.seed,
        representative_samples=100,
    )  # fmt: skip
    assert facts["1_lowrank"]["lowrank"]["changed"]  # the step factorized layers
    assert Path(row["path"]).name == "1_lowrank_tflite_int8.tflite"
    assert (tmp_path / "cand" / "model.tflite").read_bytes() == Path(row["path"]).read_bytes()
    assert metrics["val_accuracy"] == row["accuracy"]
    right = correctness(row["path"], data.test)
    assert metrics["val_correct"] == right["correct"] and right["n"] == len(yt)
