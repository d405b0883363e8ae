"""TensorBoard hparams-plugin logging of a search: one run directory per trial."""

from __future__ import annotations

from pathlib import Path

METRICS = ("score", "val_accuracy", "test_accuracy", "gzip_bytes", "bytes", "latency_ms")


def _domain(hp):
    from tensorboard.plugins.hparams import api as hp_api

    cls = type(hp).__name__
    if cls == "Choice":
        return hp_api.Discrete(list(hp.values))
    if cls == "Boolean":
        return hp_api.Discrete([False, True])
    if cls == "Fixed":
        return hp_api.Discrete([hp.value])
    if cls == "Int":
        return hp_api.IntInterval(int(hp.min_value), int(hp.max_value))
    if cls == "Float":
        return hp_api.RealInterval(float(hp.min_value), float(hp.max_value))
    return None


def write_config(log_dir, space, *, metrics=METRICS) -> None:
    """Writes the hparams experiment config (domains of ``space`` and the ``metrics`` names) to
    ``log_dir``."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    hparams = [hp_api.HParam(hp.name, _domain(hp)) for hp in space.space]
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hp_api.hparams_config(
            hparams=hparams, metrics=[hp_api.Metric(m, display_name=m) for m in metrics]
        )
    writer.close()


def write_trial(log_dir, trial_id: str, values: dict, metrics: dict, *, names=METRICS) -> Path:
    """Writes one trial's hparams and the ``names`` of ``metrics`` under ``log_dir/trial_<id>``;
    returns that dir."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    run_dir = Path(log_dir) / f"trial_{trial_id}"
    clean = {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        hp_api.hparams(clean, trial_id=str(trial_id))
        for name in names:
            value = metrics.get(name)
            if isinstance(value, int | float):
                tf.summary.scalar(name, float(value), step=0)
    writer.close()
    return run_dir
