"""The trained Fashion-MNIST float baselines that the Fashion-MNIST benchmarks share, cached.

`baseline(model_name, seed)` trains the zoo model with tfopt's own trainer (`tfopt._training.fit`)
on the options of the packaged config ``fashion`` (tfopt/configs/fashion.yaml: the model, data split
and ``train:`` section that `tfopt run fashion` uses), saves it as ``.keras`` under
``benchmarks/cache/`` (gitignored) with a ``.json`` record beside it (config, epochs, wall time,
history), and on later calls reloads it. The cache key hashes the model, seed, options and train
section, so editing the config retrains.

Usage (train and cache, logging each epoch):
    python benchmarks/_fashion.py [MODEL [SEED]]     # defaults: fashion_cnn 0
In a benchmark:
    from _fashion import baseline
    model, data, record = baseline("fashion_cnn", seed=0)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import tfopt

CACHE = Path(__file__).resolve().parent / "cache"


def fashion_config(model_name: str = "fashion_cnn", seed: int = 0, overrides=()):
    """The packaged ``fashion`` config for ``model_name`` and ``seed`` (plus ``key=value``
    overrides)."""
    over = [f"model.name={model_name}", f"seed={seed}", *overrides]
    if model_name != "fashion_cnn":
        over.append("model.options={}")
    return tfopt.config.load("fashion", overrides=over)


def _key(cfg) -> str:
    what = {
        "model": cfg.model.model_dump(),
        "seed": cfg.seed,
        "data": cfg.data.model_dump(),
        "train": cfg.train.model_dump(),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"fashion_{cfg.model.name}_s{cfg.seed}_{digest[:8]}"


def cached_path(model_name: str = "fashion_cnn", seed: int = 0, overrides=()) -> Path:
    """Where `baseline` keeps (or will keep) this baseline's ``.keras`` file."""
    return CACHE / f"{_key(fashion_config(model_name, seed, overrides))}.keras"


def baseline(model_name: str = "fashion_cnn", seed: int = 0, *, overrides=(), verbose: int = 0):
    """The trained float baseline of ``model_name`` at ``seed``: trained once, then reloaded.

    Args:
        model_name: a zoo model for 28x28x1 inputs (``fashion_cnn``, ``fashion_mobilenet``).
            Defaults to "fashion_cnn".
        seed: the run seed (weights, validation split, shuffling, augmentation). Defaults to 0.
        overrides: ``key=value`` overrides of the ``fashion`` config (e.g. ``train.epochs=5``).
            Defaults to ().
        verbose: Keras fit verbosity while training. Defaults to 0.

    Returns:
        ``(model, data, record)``: the compiled Keras model, the `tfopt.data.Dataset` (its split
        at ``seed``), and the cache record (config, epochs, seconds, history, path).
    """
    from tfopt._backend import import_keras
    from tfopt._training import fit, outputs_logits

    keras = import_keras()
    cfg = fashion_config(model_name, seed, overrides)
    data = tfopt.data.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    path = CACHE / f"{_key(cfg)}.keras"
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        model = keras.models.load_model(path, compile=False)  # the trainer's Adam state: unused
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model)),
            metrics=["accuracy"],
        )
        return model, data, json.loads(record_path.read_text())
    keras.utils.set_random_seed(cfg.seed)  # as `tfopt run` seeds before building the model
    model = tfopt.models.get(
        cfg.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        **cfg.model.options,
    )
    started = time.time()
    history = fit(model, cfg.train, data, seed=cfg.seed, verbose=verbose)
    record = {
        "model": cfg.model.name,
        "seed": cfg.seed,
        "config": cfg.model_dump(serialize_as_any=True, include={"data", "model", "train"}),
        "epochs": len(history.history["loss"]),
        "seconds": round(time.time() - started, 1),
        "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.history.items()},
        "path": str(path.relative_to(CACHE.parent.parent)),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return model, data, record


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="fashion_cnn", help="a zoo model name")
    ap.add_argument("seed", nargs="?", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
    args = ap.parse_args()
    name, seed = args.model, args.seed
    model, data, record = baseline(name, seed, overrides=args.overrides, verbose=2)
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)[:2]
    print(
        f"{name} seed {seed}: test accuracy {acc:.4f}, {record['epochs']} epochs, "
        f"{record['seconds']:.0f} s; cached at {record['path']}",
        flush=True,
    )
