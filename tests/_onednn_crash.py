"""Trains the residual CNN that crashes TF 2.21's oneDNN conv backward kernel when the last batch
is partial (issue 24): 1,437 training samples at batch 64 (22 whole batches and one of 29).

``python _onednn_crash.py keras``: plain ``keras.Model.fit`` (crashes on the CPUs where the bug
shows); ``python _onednn_crash.py tfopt``: the same fit through tfopt's trainer (whole batches).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfopt  # noqa: E402
from tfopt._training import compile_classifier, fit_arrays  # noqa: E402

EPOCHS = int(os.environ.get("EPOCHS", "1"))


def main(mode: str) -> None:
    ds = tfopt.data.load("digits32")
    x = np.concatenate([ds.x_train, ds.x_val, ds.x_test])[:1437]
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])[:1437]
    x = x.reshape(len(x), 16, 2, 16, 2, 3).mean((2, 4))  # 16x16: a quarter of the compute
    keras.utils.set_random_seed(0)
    # the first stage has 8 channels; its 1x1 stride-2 shortcut is the conv that crashes
    model = tfopt.models.get("resnet_v2_32", input_shape=(16, 16, 3), width=4)
    compile_classifier(model, 1e-3)
    if mode == "keras":
        model.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0)
    else:
        fit_arrays(model, x, y, batch_size=64, epochs=EPOCHS, verbose=0)
    print("trained", len(x), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
