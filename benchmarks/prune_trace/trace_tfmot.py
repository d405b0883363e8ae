"""tfmot side: screen_tfmot.py NPZ SPARSITY SEED FT_EPOCHS (the npz from make_npz)"""

import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent))
import _tfmot_fashion as T
import numpy as np

keras, sparsity_api = T.keras, T.sparsity_api
npz, sparsity, seed, ft = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rowjson = json.loads(open(npz + ".row.json").read())
row = rowjson[str(sparsity)]
side = T.Side(npz)
d = np.load(npz)
xt, yt = d["x_test"], d["y_test"]


class Log(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        z = n = 0
        for layer in self.model.layers:
            if hasattr(layer, "pruning_vars"):
                for _w, m, _th in layer.pruning_vars:
                    mv = m.numpy()
                    z += (mv == 0).sum()
                    n += mv.size
        self.rows.append((batch, z / n, float(logs.get("loss", 0))))


keras.utils.set_random_seed(seed)
model, cbs = side.wrapped(row, seed)
f = row["fine_tune"]
idx = T.fine_tune_subset(len(side.x), f["fraction"], seed)
model.compile(
    optimizer=keras.optimizers.Adam(f["learning_rate"]),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
log = Log()
t = time.time()
model.fit(
    side.x[idx],
    side.y[idx],
    batch_size=f["batch_size"],
    epochs=f["epochs"],
    verbose=0,
    callbacks=cbs + [log],
)
s = sparsity_api.strip_pruning(model)
s.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
acc = s.evaluate(xt, yt, verbose=0)[1]
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import recal

rng = np.random.default_rng(seed)
sub = side.x[rng.permutation(len(side.x))[:6400]]
recal.recalibrate(s, sub, keras)
acc_recal = s.evaluate(xt, yt, verbose=0)[1]
print(
    json.dumps(
        {
            "acc_recal": acc_recal,
            "variant": "tfmot",
            "sparsity": sparsity,
            "seed": seed,
            "acc": acc,
            "secs": time.time() - t,
            "ksparsity": T.kernel_sparsity(s),
            "traj": [
                (b, round(x, 4), round(loss, 3))
                for b, x, loss in log.rows
                if b % 10 == 0 or b >= len(log.rows) - 3
            ],
        }
    ),
    flush=True,
)
