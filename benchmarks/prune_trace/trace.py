"""Per-step pruning traces, tfopt vs tfmot on the same schedule (a screening script; README.md).

    python benchmarks/prune_trace/trace.py npz /tmp/in05.npz --ft-epochs 0.5
    python benchmarks/prune_trace/trace.py tfopt --variant base --sparsity 0.75 --seed 1 --ft-epochs 0.5
    python benchmarks/prune_trace/trace.py tfmot --npz /tmp/in05.npz --sparsity 0.75 --seed 1

``npz`` writes the cached Fashion-MNIST baseline's weights, the data and the three pruning rows
(`fashion_vs_tfmot.recipe`) for the tfmot side. Each side prints one JSON line: Keras test accuracy,
the accuracy after recomputing the BatchNorm statistics, and the global mask sparsity and loss
every 10 steps. tfmot needs tf_keras (Keras 2), so each side runs in its own process and this file
imports TensorFlow only once it knows which side it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # _fashion, fashion_vs_tfmot, ...
ROWS = {0.5: "prune-50", 0.75: "prune-75", 0.875: "prune-87.5"}
RECAL_BATCHES, RECAL_BATCH = 50, 128  # 6,400 training images, the same on both sides


def recalibrate(model, x) -> int:
    """Re-estimates BatchNorm moving statistics as the plain average over 50 training-mode batches
    (Keras 3 or tf_keras; tfopt's own `recalibrate_batchnorm` is Keras 3 only)."""
    bns = [layer for layer in _walk(model) if type(layer).__name__ == "BatchNormalization"]
    old = [b.momentum for b in bns]
    for i in range(RECAL_BATCHES):
        for b in bns:
            b.momentum = i / (i + 1.0)
        model(x[i * RECAL_BATCH : (i + 1) * RECAL_BATCH], training=True)
    for b, m in zip(bns, old, strict=True):
        b.momentum = m
    return len(bns)


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)
        if hasattr(layer, "layer"):
            yield layer.layer


def trace_log(keras, masks_of):
    """A callback that records (step, global mask sparsity, loss) after every training batch."""

    class Log(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_train_batch_end(self, batch, logs=None):
            masks = [np.asarray(m.numpy()) for m in masks_of(self.model)]
            zeros = sum(int((m == 0).sum()) for m in masks)
            total = sum(m.size for m in masks)
            self.rows.append((batch, zeros / total, float((logs or {}).get("loss", 0))))

    return Log()


def report(stripped, evaluate, x_train, log, started, **fields) -> None:
    """Prints the side's JSON line: accuracy before and after BatchNorm recomputation, trace."""
    acc = evaluate(stripped)
    sub = x_train[np.random.default_rng(fields["seed"]).permutation(len(x_train))[:6400]]
    recalibrate(stripped, sub)
    traj = [
        (b, round(s, 4), round(loss, 3))
        for b, s, loss in log.rows
        if b % 10 == 0 or b >= len(log.rows) - 3
    ]
    out = {"acc": acc, "acc_recal": evaluate(stripped), "secs": time.time() - started}
    print(json.dumps({**fields, **out, "traj": traj}), flush=True)


def make_npz(args) -> None:
    import fashion_vs_tfmot as B
    from _fashion import baseline

    import tfopt

    base, data, record = baseline("fashion_cnn", seed=0)
    print("float acc", base.evaluate(data.x_test, data.y_test, verbose=0), flush=True)
    w = base.get_weights()
    np.savez(
        args.out,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        representative=data.x_train[:200],
        model_source=str(Path(tfopt.models.__file__).parent / "_fashion.py"),
        model_name=base.name,
        model_options=json.dumps(record["config"]["model"]["options"]),
        n_weights=len(w),
        **{f"w{i}": x for i, x in enumerate(w)},
    )
    spec = argparse.Namespace(ft_epochs=args.ft_epochs, batch=128)
    rows = {str(s): B.recipe(B.row_specs()[n], len(data.x_train), spec) for s, n in ROWS.items()}
    Path(args.out + ".row.json").write_text(json.dumps(rows))


def patch_tfopt(variant: str) -> None:
    """Experiment-only variants of tfopt's pruning wrapper (monkeypatched): ``rezero`` sets the
    pruned weights to zero in the variable every step (tfmot's weight_mask_op); ``ste`` also lets
    the layer read that variable unmasked, so pruned weights get gradients (tfmot's gradient)."""
    from tfopt.prune import _wrapper as W

    if variant == "base":
        return
    update = W.PruneLowMagnitude._update_masks

    def _update_masks(self):
        update(self)
        for v, m in zip(self.pruned_variables(), self.masks, strict=True):
            v.assign(v.value * m.value)

    W.PruneLowMagnitude._update_masks = _update_masks
    if variant == "ste":

        def _masked_call(self, args, training, kwargs):
            if training is True:
                self._update_masks()
            values = {p: v.value for p, v in zip(self._paths, self.pruned_variables(), strict=True)}
            with W.substituted(self.layer, values):
                return self.layer(*args, **kwargs)

        W.PruneLowMagnitude._masked_call = _masked_call


def tfopt_side(args) -> None:
    import fashion_vs_tfmot as B
    from _fashion import baseline

    import tfopt
    from tfopt._backend import import_keras
    from tfopt.prune import _wrapper as W

    keras = import_keras()
    patch_tfopt(args.variant)
    base, data, _ = baseline("fashion_cnn", seed=0)
    spec = argparse.Namespace(ft_epochs=args.ft_epochs, batch=128)
    row = B.recipe(B.row_specs()[ROWS[args.sparsity]], len(data.x_train), spec)
    print("schedule", row["schedule"], row["fine_tune"], flush=True)

    def masks_of(model):
        return [m for la in model.layers if isinstance(la, W.PruneLowMagnitude) for m in la.masks]

    keras.utils.set_random_seed(args.seed)
    model = tfopt.prune.prune(base, B.schedule_of(row))
    f = row["fine_tune"]
    idx = B.fine_tune_subset(len(data.x_train), f["fraction"], args.seed)
    B.compile_model(model, f["learning_rate"])
    log, started = trace_log(keras, masks_of), time.time()
    model.fit(data.x_train[idx], data.y_train[idx], batch_size=f["batch_size"],
              epochs=f["epochs"], verbose=0, callbacks=[log])  # fmt: skip
    stripped = tfopt.prune.strip(model)
    B.compile_model(stripped, 1e-4)

    def evaluate(m):
        return m.evaluate(data.x_test, data.y_test, verbose=0)[1]

    fields = dict(variant=args.variant, sparsity=args.sparsity, seed=args.seed)
    report(stripped, evaluate, data.x_train, log, started, **fields,
           ksparsity=B.kernel_sparsity(stripped))  # fmt: skip


def tfmot_side(args) -> None:
    import _tfmot_fashion as T  # sets TF_USE_LEGACY_KERAS before TensorFlow is imported

    keras = T.keras
    row = json.loads(Path(args.npz + ".row.json").read_text())[str(args.sparsity)]
    side = T.Side(args.npz)
    d = np.load(args.npz)

    def masks_of(model):
        return [m for la in model.layers for _w, m, _t in getattr(la, "pruning_vars", ())]

    keras.utils.set_random_seed(args.seed)
    model, callbacks = side.wrapped(row, args.seed)
    f = row["fine_tune"]
    idx = T.fine_tune_subset(len(side.x), f["fraction"], args.seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(f["learning_rate"]), loss=loss, metrics=["accuracy"])
    log, started = trace_log(keras, masks_of), time.time()
    model.fit(side.x[idx], side.y[idx], batch_size=f["batch_size"], epochs=f["epochs"],
              verbose=0, callbacks=callbacks + [log])  # fmt: skip
    stripped = T.sparsity_api.strip_pruning(model)
    stripped.compile(loss=loss, metrics=["accuracy"])

    def evaluate(m):
        return m.evaluate(d["x_test"], d["y_test"], verbose=0)[1]

    fields = dict(variant="tfmot", sparsity=args.sparsity, seed=args.seed)
    report(stripped, evaluate, side.x, log, started, **fields,
           ksparsity=T.kernel_sparsity(stripped))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sides = ap.add_subparsers(dest="side", required=True)
    npz = sides.add_parser("npz", help="write the baseline, data and rows for the tfmot side")
    npz.add_argument("out", help="the .npz to write (and OUT.row.json)")
    npz.add_argument("--ft-epochs", type=float, default=0.5)
    for name in ("tfopt", "tfmot"):
        p = sides.add_parser(name, help=f"fine-tune and trace {name}'s pruning")
        p.add_argument("--sparsity", type=float, choices=sorted(ROWS), default=0.75)
        p.add_argument("--seed", type=int, default=1)
    sides.choices["tfopt"].add_argument("--variant", choices=("base", "rezero", "ste"),
                                        default="base")  # fmt: skip
    sides.choices["tfopt"].add_argument("--ft-epochs", type=float, default=0.5)
    sides.choices["tfmot"].add_argument("--npz", required=True, help="written by `trace.py npz`")
    args = ap.parse_args()
    {"npz": make_npz, "tfopt": tfopt_side, "tfmot": tfmot_side}[args.side](args)


if __name__ == "__main__":
    main()
