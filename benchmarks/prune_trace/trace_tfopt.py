"""Screen tfopt pruning variants on the cached fashion baseline. Usage: screen_tfopt.py VARIANT SPARSITY SEED [FT_EPOCHS]"""

import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent))
import fashion_vs_tfmot as B
import numpy as np
from _fashion import baseline

import tfopt
from tfopt._backend import import_keras
from tfopt.prune import _wrapper as W

keras = import_keras()
variant, sparsity, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
ft = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5

orig_update = W.PruneLowMagnitude._update_masks
orig_call = W.PruneLowMagnitude._masked_call
if "rezero" in variant:  # keep pruned variables at zero every step (tfmot's weight_mask_op)

    def _update_masks(self):
        orig_update(self)
        for v, m in zip(self.pruned_variables(), self.masks):
            v.assign(v.value * m.value)

    W.PruneLowMagnitude._update_masks = _update_masks
if "ste" in variant:  # forward reads the (re-zeroed) variable directly: unmasked gradient

    def _update_masks(self):
        orig_update(self)
        for v, m in zip(self.pruned_variables(), self.masks):
            v.assign(v.value * m.value)

    W.PruneLowMagnitude._update_masks = _update_masks

    def _masked_call(self, args, training, kwargs):
        if training is True:
            self._update_masks()
        values = {p: v.value for p, v in zip(self._paths, self.pruned_variables())}
        with W.substituted(self.layer, values):
            return self.layer(*args, **kwargs)

    W.PruneLowMagnitude._masked_call = _masked_call

base, data, record = baseline("fashion_cnn", seed=0)


class A:
    pass


args = A()
args.ft_epochs = ft
args.batch = 128
row = B.recipe(
    B.row_specs()[{0.5: "prune-50", 0.75: "prune-75", 0.875: "prune-87.5"}[sparsity]],
    len(data.x_train),
    args,
)
print("schedule", row["schedule"], row["fine_tune"], flush=True)


class Log(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        z = n = 0
        for layer in self.model.layers:
            if isinstance(layer, W.PruneLowMagnitude):
                for _v, m in zip(layer.pruned_variables(), layer.masks):
                    mv = m.numpy()
                    z += (mv == 0).sum()
                    n += mv.size
        self.rows.append((batch, z / n, float(logs.get("loss", 0))))


keras.utils.set_random_seed(seed)
model = tfopt.prune.prune(base, B.schedule_of(row))
f = row["fine_tune"]
idx = B.fine_tune_subset(len(data.x_train), f["fraction"], seed)
B.compile_model(model, f["learning_rate"])
log = Log()
t = time.time()
model.fit(
    data.x_train[idx],
    data.y_train[idx],
    batch_size=f["batch_size"],
    epochs=f["epochs"],
    verbose=0,
    callbacks=[log],
)
stripped = tfopt.prune.strip(model)
B.compile_model(stripped, 1e-4)
acc = stripped.evaluate(data.x_test, data.y_test, verbose=0)[1]
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import recal

rng = np.random.default_rng(seed)
sub = data.x_train[rng.permutation(len(data.x_train))[:6400]]
recal.recalibrate(stripped, sub, keras)
acc_recal = stripped.evaluate(data.x_test, data.y_test, verbose=0)[1]
print(
    json.dumps(
        {
            "acc_recal": acc_recal,
            "variant": variant,
            "sparsity": sparsity,
            "seed": seed,
            "acc": acc,
            "secs": time.time() - t,
            "traj": [
                (b, round(s, 4), round(loss, 3))
                for b, s, loss in log.rows
                if b % 10 == 0 or b >= len(log.rows) - 3
            ],
        }
    ),
    flush=True,
)
