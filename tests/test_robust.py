"""tfopt.robust: FGSM/PGD examples, adversarial training, robustness in bench."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from tfopt import robust  # noqa: E402


def _data(n=256, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 6).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


def _model(softmax: bool, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    out = keras.layers.Dense(2, activation="softmax" if softmax else None)(x)
    m = keras.Model(inputs, out)
    m.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=["accuracy"],
    )
    return m


@pytest.fixture(scope="module")
def trained():
    x, y = _data()
    models = {}
    for softmax in (False, True):
        m = _model(softmax)
        m.fit(x, y, epochs=15, batch_size=64, verbose=0)
        models[softmax] = m
    return x, y, models


def _loss(model, x, y, softmax):
    out = model.predict(x, verbose=0)
    p = out if softmax else np.exp(out) / np.exp(out).sum(-1, keepdims=True)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))))


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_fgsm_pgd_raise_the_loss_within_the_ball(trained, softmax):
    x, y, models = trained
    m = models[softmax]
    eps = 0.3
    clean = _loss(m, x, y, softmax)
    x_f = robust.fgsm(m, x, y, epsilon=eps)
    x_p = robust.pgd(m, x, y, epsilon=eps, steps=5)
    for x_adv in (x_f, x_p):
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        # the exact L-inf bound (clip_by_value against x -/+ eps in float32)
        assert np.all(np.abs(x_adv - x) <= np.float32(eps) * (1 + 1e-6))
        assert np.max(np.abs(x_adv - x)) > 0.9 * eps
    assert _loss(m, x_f, y, softmax) > clean + 0.1
    assert _loss(m, x_p, y, softmax) >= _loss(m, x_f, y, softmax) - 1e-3
    acc = float(np.mean(np.argmax(m.predict(x, verbose=0), -1) == y))
    assert robust.robust_accuracy(m, x, y, epsilon=eps, steps=5) < acc - 0.2
    # a clip range holds too
    x_c = robust.pgd(m, x, y, epsilon=eps, steps=2, clip=(-1.0, 1.0))
    assert x_c.min() >= -1.0 and x_c.max() <= 1.0


def test_softmax_attack_is_as_strong_as_logits(trained):
    # the same network with and without its softmax: identical examples (log p = z - lse(z))
    x, y, models = trained
    logits = models[False]
    probs = keras.Model(logits.inputs, keras.layers.Softmax()(logits.outputs[0]))
    a = robust.fgsm(logits, x, y, epsilon=0.2)
    b = robust.fgsm(probs, x, y, epsilon=0.2)
    assert np.mean(a == b) >= 0.99


def _margin(n, seed):
    # feature 0 carries 85% of the labels with a margin (|x0| >= 0.4: robust at eps=0.3);
    # features 1-5 carry every label but at scale 0.25 (an eps=0.3 step flips them): a plain fit
    # leans on them, adversarial training has to learn feature 0
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n).astype("int32")
    s = (2.0 * y - 1.0)[:, None]
    agree = np.where(rng.rand(n, 1) < 0.85, 1.0, -1.0)  # feature 0 agrees with 85% of labels
    x0 = s * agree * rng.uniform(0.4, 1.2, (n, 1))
    rest = s * 0.25 + 0.05 * rng.randn(n, 5)
    return np.concatenate([x0, rest], axis=1).astype("float32"), y


def test_adversarial_model_fits_and_raises_robust_accuracy(tmp_path):
    x, y = _margin(512, seed=1)
    xt, yt = _margin(256, seed=2)
    eps = 0.3
    plain = _model(False, seed=3)
    plain.fit(x, y, epochs=8, batch_size=64, verbose=0)
    inner = _model(False, seed=3)
    adv = robust.AdversarialModel(inner, epsilon=eps, method="pgd", steps=2)
    adv.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    hist = adv.fit(x, y, epochs=8, batch_size=64, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    r_plain = robust.robust_accuracy(plain, xt, yt, epsilon=eps, steps=5)
    r_adv = robust.robust_accuracy(inner, xt, yt, epsilon=eps, steps=5)
    assert r_plain < 0.5 and r_adv > r_plain + 0.25
    path = tmp_path / "adv.keras"
    adv.save(path)
    back = keras.models.load_model(path)
    assert (back.epsilon, back.method, back.steps) == (eps, "pgd", 2)
    np.testing.assert_allclose(back.predict(xt, verbose=0), adv.predict(xt, verbose=0), atol=1e-5)


def test_robust_errors():
    m = _model(False)
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"epsilon must be a number >= 0. Received: epsilon=-0.1"):
        robust.fgsm(m, x, y, epsilon=-0.1)
    with pytest.raises(ValueError, match=r"steps must be an int >= 1. Received: steps=0"):
        robust.pgd(m, x, y, epsilon=0.1, steps=0)
    with pytest.raises(ValueError, match=r"method must be one of \['fgsm', 'pgd'\]"):
        robust.AdversarialModel(m, epsilon=0.1, method="cw")
    with pytest.raises(ValueError, match=r"adv_weight must be in \[0, 1\]"):
        robust.AdversarialModel(m, epsilon=0.1, adv_weight=1.5)


def test_bench_robust_accuracy_keras_white_box_and_tflite_transfer(trained, tmp_path):
    from tfopt import bench, export

    x, y, models = trained
    m = models[False]
    eps = 0.3
    keras_res = bench.benchmark(m, (x, y), concurrency=(), runs=1, warmup=0, robust_epsilon=eps)
    expected = robust.robust_accuracy(m, x, y, epsilon=eps, steps=10)
    assert keras_res.robust_accuracy == expected and keras_res.robust_epsilon == eps
    assert "white-box" in keras_res.robust_attack
    art = export.export(m, tmp_path / "m.tflite", format="tflite", check_data=x[:32])
    with pytest.raises(ValueError, match="needs attack_model="):
        bench.benchmark(art.path, (x, y), concurrency=(), runs=1, robust_epsilon=eps)
    res = bench.benchmark(
        art.path, (x, y), concurrency=(), runs=1, warmup=0, robust_epsilon=eps, attack_model=m
    )
    assert "transfer from Keras model" in res.robust_attack and "tflite" in res.robust_attack
    # float TFLite computes what Keras computes: the transferred examples fool it the same way
    assert abs(res.robust_accuracy - expected) <= 0.02
    assert res.robust_accuracy < res.accuracy - 0.2
