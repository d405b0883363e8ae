"""`tfopt auto` builds and trains its baseline with `tfopt run`'s builder (`_pipeline`)."""

import numpy as np


def test_auto_baseline_is_built_as_tfopt_run_builds_it(tmp_path, progress):
    import keras

    from tfopt import config
    from tfopt import data as data_mod
    from tfopt._pipeline import build_baseline
    from tfopt._steps import StepContext
    from tfopt.cli._auto import baseline_model

    # a 10-way model and 4-class data: the config's transfer section gives it a new 4-way head
    keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Flatten(name="flatten"), keras.layers.Dense(10)],
        name="m",
    ).save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(40, 6, 6, 1)).astype("float32"),
             y_train=np.arange(40) % 4, x_test=rng.normal(size=(12, 6, 6, 1)).astype("float32"),
             y_test=np.arange(12) % 4)  # fmt: skip
    cfg = config.load(
        None,
        overrides=[f"model.path={tmp_path / 'm.keras'}", "model.name=null", "train.epochs=1",
                   f"data.name={tmp_path / 'd.npz'}", "transfer.head=new"],
    )  # fmt: skip
    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    lines = progress
    model = baseline_model(cfg, data, tmp_path / "auto")
    assert model.output_shape == (None, 4)  # the transfer head, as in `tfopt run`
    ctx = StepContext(data=data, run_dir=tmp_path / "run", verbose=0)
    keras.utils.set_random_seed(cfg.seed)
    assert build_baseline(cfg, data, ctx).output_shape == (None, 4)
    assert lines[0] == "[tfopt]       transfer: head new, 0 layers frozen"
    assert lines[1] == f"[auto] training the float baseline: {model.name}, 1 epochs"
    saved = keras.models.load_model(tmp_path / "auto" / "baseline.keras")
    assert saved.output_shape == (None, 4)
    for a, b in zip(saved.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # a resumed run loads the baseline it trained
    again = baseline_model(cfg, data, tmp_path / "auto")
    assert lines[-1].startswith("[auto] using the trained baseline of the earlier run")
    np.testing.assert_array_equal(again.get_weights()[-1], model.get_weights()[-1])
