"""Distiller: the loss formula, frozen teacher, metrics, features, precompute, students, errors."""

import keras
import numpy as np
import pytest

import tfopt
from tfopt.distill import Distiller


def _net(width=8, dense=16, **kw):
    return tfopt.models.get("mnist1d_cnn", width=width, dense=dense, **kw)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_loss_is_alpha_ce_plus_one_minus_alpha_t2_kl_plus_regularization(tiny_data):
    x, y = tiny_data
    teacher, student = _net(), _net(width=4, dense=8, l2=1e-3)
    d = Distiller(teacher=teacher, student=student, temperature=2.5, alpha=0.3)
    d.compile("adam")
    logits = d(x[:16], training=False)
    got = float(d.compute_loss(x[:16], y[:16], logits, training=False))
    s = np.asarray(logits, "float64")
    t = teacher.predict(x[:16], verbose=0).astype("float64")
    ce = -np.mean(np.log(_softmax(s)[np.arange(16), y[:16]]))
    pt, ps = _softmax(t / 2.5), _softmax(s / 2.5)
    kl = np.mean(np.sum(pt * np.log(pt / ps), axis=-1))
    reg = sum(float(v) for v in student.losses)
    assert reg > 0
    np.testing.assert_allclose(got, 0.3 * ce + 0.7 * 2.5**2 * kl + reg, rtol=1e-5)


def _tiny(activation=None, name=None):
    """Input (2,) -> Dense(3): a model small enough to check the loss by hand."""
    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, activation=activation)], name=name
    )


# Two samples, three classes: student logits s, teacher logits t, labels y.
_S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "float32")
_T = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]], "float32")
_Y = np.array([1, 2], "int32")


def _hand_loss(s, t, y, temperature, alpha):
    s, t = s.astype("float64"), t.astype("float64")
    ce = -np.mean(np.log(_softmax(s)[np.arange(len(y)), y]))
    pt, ps = _softmax(t / temperature), _softmax(s / temperature)
    kl = np.mean(np.sum(pt * np.log(pt / ps), axis=-1))
    return alpha * ce + (1 - alpha) * temperature**2 * kl, ce, temperature**2 * kl


@pytest.mark.parametrize(("teacher_act", "student_act"), [(None, None), ("softmax", "softmax")])
def test_loss_on_tiny_tensors_is_hand_computed_kl_t2_plus_ce(teacher_act, student_act):
    d = Distiller(
        teacher=_tiny(teacher_act), student=_tiny(student_act), temperature=2.0, alpha=0.25
    )
    d.compile("sgd")
    # stored teacher outputs and given student outputs, as the models would produce them
    t = _softmax(_T) if teacher_act else _T
    s = _softmax(_S) if student_act else _S
    got = d.compute_loss(y={"labels": _Y, "teacher": t}, y_pred=keras.ops.convert_to_tensor(s))
    want, ce, soft = _hand_loss(_S, _T, _Y, 2.0, 0.25)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(d.student_loss_tracker.result()), ce, rtol=1e-5)
    np.testing.assert_allclose(float(d.distillation_loss_tracker.result()), soft, rtol=1e-5)


def _with_softmax(model, kind):
    """``model`` (logits) with a softmax head, built three ways; same weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    if kind == "layer":  # nested model + Softmax layer
        return keras.Sequential([copy, keras.layers.Softmax()])
    if kind == "head":  # flat: the copy's layers (names kept) + a Softmax layer
        return keras.Model(copy.input, keras.layers.Softmax()(copy.output))
    x = keras.Input(model.input_shape[1:])
    if kind == "op":  # keras.ops.softmax in a functional graph
        return keras.Model(x, keras.ops.softmax(copy(x)))
    raise AssertionError(kind)


def test_softmax_teacher_and_student_give_the_logits_loss_and_train(tiny_data):
    x, y = tiny_data
    teacher, student = _net(), _net(width=4, dense=8)
    ref = Distiller(teacher=teacher, student=student, temperature=3.0, alpha=0.4)
    ref.compile("adam")
    want = float(ref.compute_loss(x[:16], y[:16], training=False))
    soft_teacher = _with_softmax(teacher, "layer")
    soft_student = _with_softmax(student, "op")
    d = Distiller(teacher=soft_teacher, student=soft_student, temperature=3.0, alpha=0.4)
    assert d._teacher_probs and d._student_probs
    d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    np.testing.assert_allclose(
        float(d.compute_loss(x[:16], y[:16], training=False)), want, rtol=1e-5
    )
    hist = d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    p = d.predict(x, verbose=0)  # the student's own outputs: probabilities
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    # a subclassed student can't be inspected: say what it returns
    assert not Distiller(
        teacher=teacher, student=soft_student, student_output="logits"
    )._student_probs


def test_ends_in_softmax_sees_through_wrappers_and_nested_models():
    from tfopt.distill._distiller import ends_in_softmax

    def seq(*layers):
        return keras.Sequential([keras.Input((40, 1)), keras.layers.Flatten(), *layers])

    soft = seq(keras.layers.Dense(10, activation="softmax"))
    assert ends_in_softmax(soft)
    assert ends_in_softmax(seq(keras.layers.Dense(10), keras.layers.Activation("softmax")))
    assert ends_in_softmax(tfopt.quantize.qat(soft))
    assert ends_in_softmax(tfopt.prune.prune(soft))
    assert ends_in_softmax(_with_softmax(_net(), "op"))
    assert not ends_in_softmax(_net())
    assert not ends_in_softmax(seq(keras.layers.Dense(10, activation="log_softmax")))


def test_fit_trains_student_only_and_metrics_are_the_students(tiny_data):
    x, y = tiny_data
    # BatchNorm moving statistics would move if the teacher ran in training mode
    teacher = tfopt.models.get("mnist1d_resnet", width=4, blocks=1)
    student = _net(width=4, dense=8)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    d = Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.1)
    d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    assert {v.path for v in d.trainable_weights} == {v.path for v in student.trainable_weights}
    hist = d.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y))
    assert set(hist.history) >= {
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
        "val_accuracy",
    }
    for a, b in zip(teacher.get_weights(), teacher_before):
        np.testing.assert_array_equal(a, b)
    assert teacher.trainable  # the user's teacher is not modified
    assert any(not np.array_equal(a, b) for a, b in zip(student.get_weights(), student_before))
    res = d.evaluate(x, y, verbose=0, return_dict=True)
    pred = d.predict(x, verbose=0)
    np.testing.assert_allclose(pred, student.predict(x, verbose=0), atol=1e-6)
    assert res["accuracy"] == pytest.approx(np.mean(pred.argmax(-1) == y))
    assert res["loss"] == pytest.approx(
        0.1 * res["student_loss"] + 0.9 * res["distillation_loss"], rel=1e-4
    )


def test_alpha_one_is_plain_training(tiny_data):
    x, y = tiny_data
    plain = _net(width=4, dense=8)
    student = keras.models.clone_model(plain)
    student.set_weights(plain.get_weights())
    d = Distiller(teacher=_net(), student=student, alpha=1.0)
    d.compile(keras.optimizers.SGD(0.1))
    plain.compile(
        keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    d.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    plain.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(student.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_precomputed_teacher_gives_the_same_training(tiny_data):
    x, y = tiny_data
    teacher = _net()
    s1 = _net(width=4, dense=8)
    s2 = keras.models.clone_model(s1)
    s2.set_weights(s1.get_weights())
    init = None
    for student, pre in ((s1, False), (s2, True)):
        d = Distiller(
            teacher=teacher,
            student=student,
            alpha=0.2,
            features={"fc1": "fc1"},
            precompute_teacher=pre,
        )
        init = d.projections[0].kernel.numpy() if init is None else init  # 8 -> 16 projection
        d.projections[0].kernel.assign(init)
        d.compile(keras.optimizers.SGD(0.05))
        d.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(s1.get_weights(), s2.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    d = Distiller(teacher=teacher, student=_net(width=4), precompute_teacher=True)
    d.compile("adam")
    import tensorflow as tf

    with pytest.raises(ValueError, match="precompute_teacher=True needs fit"):
        d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)


def test_precomputed_teacher_outputs_give_the_live_teachers_loss(tiny_data):
    import tensorflow as tf

    x, y = tiny_data
    teacher = _with_softmax(_net(), "head")  # stored probabilities, as the teacher returns them
    d = Distiller(teacher=teacher, student=_net(width=4, dense=8), features=[("fc1", "fc1")])
    d.compile("adam")
    stored = d.precompute(x[:16])
    np.testing.assert_allclose(stored["final_output"].sum(-1), 1.0, rtol=1e-5)
    y_pred = d(x[:16], training=False)
    live = float(d.compute_loss(x[:16], y[:16], y_pred, training=False))
    y_pred = d(x[:16], training=False)
    given = d.compute_loss(x[:16], {"labels": y[:16], "teacher": stored}, y_pred, training=False)
    np.testing.assert_allclose(float(given), live, rtol=1e-5)

    # a dataset that carries the stored outputs trains without calling the teacher
    def no_teacher(_):
        raise AssertionError("the teacher ran")

    d._teacher_outputs = no_teacher
    ds = tf.data.Dataset.from_tensor_slices((x, {"labels": y, "teacher": d.precompute(x)}))
    hist = d.fit(ds.batch(16), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()


def test_feature_distillation_projects_different_widths(tiny_data):
    x, y = tiny_data
    teacher, student = _net(width=8, dense=16), _net(width=4, dense=16)
    d = Distiller(
        teacher=teacher,
        student=student,
        alpha=0.0,
        features={"conv3": "conv3", "fc1": "fc1"},
        feature_weight=2.0,
    )
    proj_conv, proj_fc = d.projections
    assert proj_fc is None  # same width: identity
    assert tuple(proj_conv.kernel.shape) == (4, 8)
    before = proj_conv.kernel.numpy().copy()
    d.compile(keras.optimizers.Adam(1e-2))
    logits = d(x[:8], training=False)
    got = float(d.compute_loss(x[:8], y[:8], logits, training=False))
    t_feat = keras.Model(
        teacher.input, [teacher.get_layer("conv3").output, teacher.get_layer("fc1").output]
    )
    s_feat = keras.Model(
        student.input, [student.get_layer("conv3").output, student.get_layer("fc1").output]
    )
    tc, tf_ = (np.asarray(a) for a in t_feat(x[:8]))
    sc, sf = (np.asarray(a) for a in s_feat(x[:8]))
    pt, ps = _softmax(teacher.predict(x[:8], verbose=0) / 4), _softmax(np.asarray(logits) / 4)
    kl = np.mean(np.sum(pt * np.log(pt / ps), -1))
    mse = np.mean((tc - sc @ before) ** 2) + np.mean((tf_ - sf) ** 2)
    np.testing.assert_allclose(got, 16 * kl + 2.0 * mse, rtol=1e-4)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.allclose(proj_conv.kernel.numpy(), before)  # the projection learns
    with pytest.raises(ValueError, match=r"no layer named 'nope'"):
        Distiller(teacher=teacher, student=student, features={"nope": "fc1"})
    with pytest.raises(
        ValueError, match=r"differ only in their last .* 'conv2' shape=\(None, 20, 8\)"
    ):
        Distiller(teacher=teacher, student=student, features={"conv2": "conv3"})


def test_keras_distillation_loss_can_be_plugged_in(tiny_data):
    x, y = tiny_data
    teacher, student = _net(), _net(width=4)
    ours = Distiller(teacher=teacher, student=student, temperature=3.0, alpha=0.0)
    ours.compile("adam")
    theirs = Distiller(teacher=teacher, student=student, temperature=3.0, alpha=0.0)
    kd = keras.distillation.LogitsDistillation(temperature=3.0, loss=keras.losses.KLDivergence())
    theirs.compile("adam", distillation_loss=kd)
    logits = ours(x[:16])
    a = float(ours.compute_loss(x[:16], y[:16], logits, training=False))
    b = float(theirs.compute_loss(x[:16], y[:16], logits, training=False))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # by name too: Keras 3.15 resolves "kl_divergence" to a bare function that skips softmax and T²
    theirs.compile("adam", distillation_loss="kl_divergence")
    c = float(theirs.compute_loss(x[:16], y[:16], logits, training=False))
    np.testing.assert_allclose(c, a, rtol=1e-5)
    with pytest.raises(TypeError, match="distillation_loss must be"):
        theirs.compile("adam", distillation_loss=3)


def test_clustered_and_stripped_students_train_and_save_alone(tmp_path, tiny_data):
    x, y = tiny_data
    teacher = _net()
    clustered = tfopt.cluster.cluster(_net(width=4), 4)  # custom wrapper layers
    for name, student in (("clustered", clustered), ("stripped", tfopt.cluster.strip(clustered))):
        d = Distiller(teacher=teacher, student=student, alpha=0.5)
        d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
        d.fit(x, y, epochs=1, batch_size=16, verbose=0)
        d.student.save(tmp_path / f"{name}.keras")
        loaded = tfopt.models.load(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)
    assert max(tfopt.cluster.distinct_values(clustered).values()) == 4  # still clustered


def test_pruned_student_masks_advance_once_per_step(tiny_data):
    x, y = tiny_data
    schedule = tfopt.prune.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=7, power=1, frequency=1)
    pruned = tfopt.prune.prune(_net(width=4), schedule)
    # features too: the student's output and features come from one pass
    d = Distiller(teacher=_net(), student=pruned, alpha=0.5, features={"fc1": "prune_fc1"})
    d.compile(keras.optimizers.Adam(1e-2))
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)  # 4 steps
    wrappers = [w for w in pruned.layers if isinstance(w, tfopt.prune.PruneLowMagnitude)]
    assert wrappers and all(w.step == 4 for w in wrappers)
    zeros, total = pruned.get_layer("prune_fc1").sparsities()["_kernel"]
    assert abs(zeros / total - schedule(3)) <= 1 / total  # the masks of the 4th step (3/7 of 0.5)


def test_qat_student_exports_to_int8_tflite_after_distillation(tmp_path, tiny_data):
    from _tflite import tflite_ops

    x, y = tiny_data
    q = tfopt.quantize.qat(_net(width=4))
    d = Distiller(teacher=_with_softmax(_net(), "layer"), student=q, alpha=0.5)
    d.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_allclose(d.predict(x, verbose=0), q.predict(x, verbose=0), atol=1e-6)
    art = tfopt.export.tflite(d.student, tmp_path / "q.tflite", quantization="int8", check_data=x)
    _, ops = tflite_ops(art.path)
    kernels = [op for op in ops if op[0] in ("CONV_2D", "FULLY_CONNECTED")]
    assert kernels and all(ins[:2] == ["int8", "int8"] for _, ins, _, _ in kernels), kernels


def test_keras_round_trip_gives_identical_predictions(tmp_path, tiny_data):
    x, y = tiny_data
    teacher = _with_softmax(_net(), "head")
    student = _net(width=4, dense=8)  # fc1: 8 -> 16 projection
    pruned = tfopt.prune.prune(student, tfopt.prune.ConstantSparsity(0.5, frequency=1))
    d = Distiller(
        teacher=teacher, student=pruned, temperature=2.0, alpha=0.3, features={"fc1": "prune_fc1"}
    )
    d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert type(loaded) is Distiller
    # (the models' configs differ only in Keras's shared-object ids)
    own = [k for k in d.get_config() if k not in ("teacher", "student")]
    assert [loaded.get_config()[k] for k in own] == [d.get_config()[k] for k in own]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), d.predict(x, verbose=0))
    for a, b in zip(loaded.teacher.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.projections[0].kernel.numpy(), d.projections[0].kernel)
    assert loaded.student.get_layer("prune_fc1").step == 4
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert teacher.trainable and loaded.teacher.trainable  # the teacher's flags are not changed
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)  # compiled on load: training resumes
    assert loaded.student.get_layer("prune_fc1").step == 8
    small = tfopt.prune.strip(loaded.student)  # the student is extracted for export
    assert not any(isinstance(w, tfopt.prune.PruneLowMagnitude) for w in small.layers)
    assert np.mean(small.get_layer("fc1").kernel.numpy() == 0) >= 0.49


def test_subclassed_student(tiny_data):
    class Small(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.flat(x))

    x, y = tiny_data
    student = Small()
    d = Distiller(teacher=_net(), student=student, alpha=0.5)
    d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="features needs Functional or Sequential models"):
        Distiller(teacher=_net(), student=Small(), features=["fc1"])


@keras.saving.register_keras_serializable(package="tfopt_tests")
class AddOneInTraining(keras.layers.Layer):
    """A deterministic "augmentation": +1 in training, identity otherwise."""

    def call(self, x, training=False):
        return x + 1.0 if training else x


def test_augment_feeds_the_same_augmented_batch_to_teacher_and_student(tmp_path):
    teacher, student = _tiny(name="t"), _tiny(name="s")
    x = np.array([[0.5, -1.0], [2.0, 0.25]], "float32")
    d = Distiller(
        teacher=teacher, student=student, temperature=2.0, alpha=0.25, augment=AddOneInTraining()
    )
    d.compile(keras.optimizers.SGD(0.0))
    got = d.train_on_batch(x, _Y, return_dict=True)["loss"]
    # both models saw x + 1 (a teacher that saw x gives another loss)
    t, s = teacher.predict(x + 1, verbose=0), student.predict(x + 1, verbose=0)
    np.testing.assert_allclose(got, _hand_loss(s, t, _Y, 2.0, 0.25)[0], rtol=1e-5)
    stale = _hand_loss(s, teacher.predict(x, verbose=0), _Y, 2.0, 0.25)[0]
    assert abs(got - stale) > 1e-3
    # evaluation and the student alone see the raw inputs; the student has no augment layer
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0))
    assert [type(layer).__name__ for layer in student.layers] == ["Dense"]
    d.save(tmp_path / "d.keras")
    assert type(keras.models.load_model(tmp_path / "d.keras").augment[0]) is AddOneInTraining
    with pytest.raises(ValueError, match="augment and mixup need the teacher online"):
        Distiller(
            teacher=teacher, student=student, augment=AddOneInTraining(), precompute_teacher=True
        )
    with pytest.raises(TypeError, match="augment must be a Keras layer"):
        Distiller(teacher=teacher, student=student, augment=[lambda v: v])


def test_mixup_mixes_inputs_for_both_models_and_labels_for_the_hard_loss():
    teacher, student = _tiny(name="t"), _tiny(name="s")
    x = np.array([[0.5, -1.0], [2.0, 0.25], [-1.5, 1.0]], "float32")
    y = np.array([0, 2, 1], "int32")
    d = Distiller(teacher=teacher, student=student, temperature=2.0, alpha=0.25, mixup=0.4)
    d.compile("sgd")
    y_pred = d(x, training=True)  # mixes the batch, kept for compute_loss
    lam, perm = (np.asarray(v) for v in d._scratch.mix)
    mixed = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
    np.testing.assert_allclose(np.asarray(d._scratch.inputs), mixed, rtol=1e-6)
    got = float(d.compute_loss(x, y, y_pred, training=True))
    s, t = student.predict(mixed, verbose=0), teacher.predict(mixed, verbose=0)
    log_p = np.log(_softmax(s.astype("float64")))
    rows = np.arange(3)
    ce = np.mean(-lam * log_p[rows, y] - (1 - lam) * log_p[rows, y[perm]])
    soft = _hand_loss(s, t, y, 2.0, 0.0)[2]
    np.testing.assert_allclose(got, 0.25 * ce + 0.75 * soft, rtol=1e-5)
    assert 0 < lam.min() and lam.max() < 1 and sorted(perm) == [0, 1, 2]
    with pytest.raises(ValueError, match="mixup must be a number >= 0"):
        Distiller(teacher=teacher, student=student, mixup=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, r"temperature must be a number > 0. Received: temperature=0"),
        ({"temperature": -1.5}, r"Received: temperature=-1.5"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]. Received: alpha=1.5"),
        ({"alpha": -0.1}, r"Received: alpha=-0.1"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Distiller(teacher=_net(), student=_net(width=4), **kwargs)


def test_bad_models():
    with pytest.raises(
        ValueError, match=r"teacher output shape=\(None, 10\), student output shape=\(None, 5\)"
    ):
        Distiller(teacher=_net(), student=tfopt.models.get("mnist1d_cnn", num_classes=5))
    with pytest.raises(
        ValueError,
        match=r"teacher input shape=\(None, 40, 1\), student input shape=\(None, 30, 1\)",
    ):
        Distiller(teacher=_net(), student=tfopt.models.get("mnist1d_cnn", input_shape=(30, 1)))
    with pytest.raises(ValueError, match=r"teacher_output must be None \(detect\), 'logits' or"):
        Distiller(teacher=_net(), student=_net(width=4), teacher_output="softmax")
    with pytest.raises(
        TypeError, match=r"`student` must be a keras.Model .* Received: student=str"
    ):
        Distiller(teacher=_net(), student="student.keras")
    d = Distiller(teacher=_net(), student=_net(width=4))
    with pytest.raises(ValueError, match="not loss="):
        d.compile("adam", loss="mse")


def test_distill_recipe_step(tmp_path, tiny_data, monkeypatch):
    from tfopt._pipeline import StepContext
    from tfopt.config._steps import DistillStepConfig as Config
    from tfopt.distill import _step

    x, y = tiny_data
    data = tfopt.data.from_arrays(x, y, x_test=x[:16], y_test=y[:16])
    teacher = _net()
    teacher.save(tmp_path / "teacher.keras")
    ctx = StepContext(data=data, run_dir=tmp_path, baseline=_net(), verbose=0, stage="2_distill")
    cfg = Config(
        teacher=str(tmp_path / "teacher.keras"),
        student={"model": "mnist1d_cnn", "width": 4},
        epochs=1,
    )
    out = _step.run(cfg, teacher, ctx)
    assert out.get_layer("conv1").filters == 4
    assert ctx.records["2_distill"]["student_params"] == out.count_params()
    current = _net(width=6)
    before = [w.copy() for w in current.get_weights()]
    out = _step.run(Config(epochs=1), current, ctx)  # baseline teacher, copy of current model
    assert out is not current and out.get_layer("conv1").filters == 6
    for a, b in zip(current.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    seen = {}

    class Recording(Distiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update(augment=self.augment, mixup=self.mixup, pre=self.precompute_teacher)

    monkeypatch.setattr(tfopt.distill, "Distiller", Recording)
    _step.run(Config(epochs=1, augment={"shift": 2, "mixup": 0.5}), current, ctx)
    assert [type(a).__name__ for a in seen["augment"]] == ["RandomShift1D"]
    assert seen["mixup"] == 0.5 and seen["pre"] is False  # the teacher runs online
    with pytest.raises(tfopt.ConfigError, match="augment needs the teacher online"):
        tfopt.config.validate(
            {"steps": [{"type": "distill", "augment": {"noise": 0.1}, "precompute_teacher": True}]}
        )
    with pytest.raises(tfopt.ConfigError, match="alpha"):
        tfopt.config.validate({"steps": [{"type": "distill", "alpha": 2}]})
    with pytest.raises(tfopt.ConfigError, match="student.model must name a zoo model"):
        tfopt.config.validate({"steps": [{"type": "distill", "student": {"model": "resnet"}}]})
