import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent))
from pathlib import Path

import fashion_vs_tfmot as B
import numpy as np
from _fashion import baseline

import tfopt

ft = float(sys.argv[1])
out = sys.argv[2]
base, data, record = baseline("fashion_cnn", seed=0)
print("float acc", base.evaluate(data.x_test, data.y_test, verbose=0), flush=True)
w = base.get_weights()
np.savez(
    out,
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


class A:
    pass


a = A()
a.ft_epochs = ft
a.batch = 128
rows = {
    str(s): B.recipe(B.row_specs()[n], len(data.x_train), a)
    for s, n in ((0.5, "prune-50"), (0.75, "prune-75"), (0.875, "prune-87.5"))
}
Path(out + ".row.json").write_text(json.dumps(rows))
