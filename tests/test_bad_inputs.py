"""Bad inputs a user can give, each refused in one line before any training (issues 24 and 25).

Each table row is one case: what is wrong, and the exact line that says what to do.
"""

import numpy as np
import pytest
from _helpers import save_dense_model

import tfopt
from tfopt.errors import DataError


def _good():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(40, 6, 6, 1)).astype("float32"),
        "y_train": np.arange(40) % 3,
        "x_test": rng.normal(size=(10, 6, 6, 1)).astype("float32"),
        "y_test": np.arange(10) % 3,
    }


def _set(key, value):
    def change(d):
        d[key] = value(d) if callable(value) else value

    return change


def _poke(key, index, value, dtype=None):
    def change(d):
        a = d[key].astype(dtype) if dtype else d[key].copy()
        a[index] = value
        d[key] = a

    return change


# (case, change to a good .npz, the one line `from_npz` raises)
BAD_NPZ = [
    (
        "nan_in_x_train",
        _poke("x_train", (5, 0, 0, 0), np.nan),
        "bad.npz: x_train holds NaN or infinite values in 1 of 40 samples (the first is sample 5);"
        " clean or drop those samples (and their labels) from x_train",
    ),
    (
        "inf_in_x_test",
        _poke("x_test", (2, 1, 1, 0), np.inf),
        "bad.npz: x_test holds NaN or infinite values in 1 of 10 samples (the first is sample 2);"
        " clean or drop those samples (and their labels) from x_test",
    ),
    (
        "x_y_length_mismatch",
        _set("y_train", lambda d: d["y_train"][:30]),
        "bad.npz: x_train has 40 samples but y_train has 30 labels; give one label per sample",
    ),
    (
        "empty_test_split",
        lambda d: d.update(x_test=d["x_test"][:0], y_test=d["y_test"][:0]),
        "bad.npz: x_test holds no samples (shape (0, 6, 6, 1)); each split needs at least 1",
    ),
    (
        "string_inputs",
        _set("x_train", lambda d: d["x_train"].astype(str)),
        "bad.npz: x_train holds strings, not numbers; convert it to a numeric array, e.g. "
        "x_train.astype('float32')",
    ),
    (
        "string_labels",
        _set("y_train", lambda d: np.array(["cat", "dog", "owl"])[d["y_train"]]),
        "bad.npz: y_train holds strings, not class indices; map each class to 0..k-1, e.g. "
        "classes, y_train = np.unique(y_train, return_inverse=True)",
    ),
    (
        "negative_label",
        _poke("y_train", 3, -1),
        "bad.npz: y_train must be >= 0; received -1 (1 < 0); class indices start at 0: remap "
        "them, e.g. np.unique(y_train, return_inverse=True)[1]",
    ),
    (
        "fractional_label",
        _poke("y_train", 4, 0.5, dtype="float64"),
        "bad.npz: y_train must be whole class indices; received 0.5 at sample 4 (dtype float64);"
        " round or map them to 0..k-1",
    ),
    (
        "nan_label",
        _poke("y_test", 7, np.nan, dtype="float32"),
        "bad.npz: y_test must be whole class indices; received nan at sample 7 (dtype float32);"
        " round or map them to 0..k-1",
    ),
    (
        "one_hot_labels",
        _set("y_train", lambda d: np.eye(3)[d["y_train"]]),
        "bad.npz: y_train looks one-hot (shape (40, 3)): pass integer labels, e.g. "
        "y_train.argmax(1)",
    ),
    (
        "one_hot_test_labels_only",
        _set("y_test", lambda d: np.eye(3)[d["y_test"]]),
        "bad.npz: y_test looks one-hot (shape (10, 3)): pass integer labels, e.g. y_test.argmax(1)",
    ),
    (
        "test_class_never_trained",
        _poke("y_test", 0, 5),
        "bad.npz: y_test must be class indices < 3 (the number of classes in y_train); received 5"
        " (1 labels out of range)",
    ),
    (
        "channel_axis_missing_in_one_split",
        _set("x_test", lambda d: d["x_test"][..., 0]),
        "bad.npz: the splits' samples differ in shape (x_train (6, 6, 1), x_test (6, 6)); give "
        "every split the same sample shape (a missing channel axis? add it with x[..., None])",
    ),
    (
        "one_number_per_sample",
        lambda d: d.update(x_train=d["x_train"][:, 0, 0, 0], x_test=d["x_test"][:, 0, 0, 0]),
        "bad.npz: x_train has shape (40,): one number per sample; give each sample an axis of "
        "features, e.g. x_train[:, None]",
    ),
]


def _write(tmp_path, change):
    arrays = _good()
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, change, message", BAD_NPZ, ids=[c[0] for c in BAD_NPZ])
def test_from_npz_refuses_bad_data_in_one_line(tmp_path, case, change, message):
    with pytest.raises(DataError) as info:
        tfopt.data.from_npz(_write(tmp_path, change))
    assert str(info.value) == message


def test_from_npz_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    arrays = _good()
    arrays["x_train"] = np.array([[1.0, 2.0], [3.0]] + [[0.0]] * 38, dtype=object)
    np.savez(path, **arrays)  # np.savez pickles object arrays; tfopt never unpickles
    with pytest.raises(DataError) as info:
        tfopt.data.from_npz(path)
    assert str(info.value) == (
        "bad.npz: x_train holds Python objects (a pickled array), not numbers; save it as a "
        "numeric array, e.g. np.asarray(x_train, dtype='float32')"
    )


@pytest.mark.parametrize(
    "x, y, message",
    [
        (
            np.zeros((3, 2)),
            np.zeros(2),
            "x has 3 samples but y has 2 labels; give one label per sample",
        ),
        (
            np.zeros((20, 2)),
            np.eye(4)[np.arange(20) % 4],
            "y looks one-hot (shape (20, 4)): pass integer labels, e.g. y.argmax(1)",
        ),
        (
            np.array([["a", "b"]] * 20),
            np.arange(20) % 2,
            "x holds strings, not numbers; convert it to a numeric array, e.g. x.astype('float32')",
        ),
    ],
    ids=["length_mismatch", "one_hot", "strings"],
)
def test_from_arrays_names_the_argument(x, y, message):
    with pytest.raises(DataError) as info:
        tfopt.data.from_arrays(x, y)
    assert str(info.value) == message


def test_from_tf_dataset_checks_the_same_way():
    import tensorflow as tf

    x = np.ones((20, 3), "float32")
    x[4, 1] = np.nan
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(20) % 2))
    with pytest.raises(DataError, match=r"^train's x holds NaN or infinite values in 1 of 20"):
        tfopt.data.from_tf_dataset(ds)


COMMANDS = {  # each command's argv after the data (tune used to train on NaN and exit 0)
    "run": ["run", "train.epochs=1"],
    "tune": ["tune", "--max-trials", "1", "tune.max_epochs=1"],
    "auto": ["auto", "--epochs", "0", "--max-accuracy-drop", "0.1"],
}


@pytest.mark.parametrize(
    "case, command",
    [(case, "run") for case in ("one_hot_labels", "x_y_length_mismatch", "negative_label")]
    + [("nan_in_x_train", command) for command in COMMANDS],
)
def test_cli_refuses_bad_npz_before_training(tmp_path, capsys, case, command):
    from tfopt.cli import main

    change, message = next((c[1], c[2]) for c in BAD_NPZ if c[0] == case)
    path = _write(tmp_path, change)
    out = tmp_path / "run"
    assert main([*COMMANDS[command], "--data", str(path), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"tfopt: error: {message}"
    # run and auto make --out (marked) before they load the data: refused, they remove it
    assert not out.exists()


# -- data that the model cannot take, refused where both are known (before the baseline fit) ----


NO_CHANNEL = (
    "bad.npz's samples have shape (6, 6) but model 'm' takes (6, 6, 1); add the channel axis, "
    "e.g. x = x[..., None]"
)
TOO_FEW_OUTPUTS = (
    "bad.npz has 5 classes (labels 0..4) but model 'm' has 3 outputs; give it a 5-way head "
    "(a transfer: section with head: new) or check the labels"
)
TRANSFER = [
    "transfer.freeze_until=flatten",
    "transfer.head=keep",
    "transfer.unfreeze_at_epoch=null",
]


def _no_channel(d):
    d.update(x_train=d["x_train"][..., 0], x_test=d["x_test"][..., 0])


def _five_classes(d):
    d.update(y_train=np.arange(40) % 5, y_test=np.arange(10) % 5)


@pytest.mark.parametrize(
    "command, change, message",
    [
        (["run", "--model", "m.keras", "--data", "bad.npz"], _no_channel, NO_CHANNEL),
        (["run", "--model", "m.keras", "--data", "bad.npz"], _five_classes, TOO_FEW_OUTPUTS),
        (["auto", "--model", "m.keras", "--data", "bad.npz", "--max-accuracy-drop", "0.01"],
         _no_channel, NO_CHANNEL),
        (["tune", "model.name=null", "model.path=m.keras", "data.name=bad.npz", *TRANSFER],
         _no_channel, NO_CHANNEL),
        (["export", "m.keras", "--data", "bad.npz"], _no_channel, NO_CHANNEL),
    ],
    ids=["run_no_channel", "run_too_few_outputs", "auto_no_channel", "tune_no_channel",
         "export_no_channel"],
)  # fmt: skip
def test_model_data_mismatch_is_refused_before_training(
    tmp_path, monkeypatch, capsys, command, change, message
):
    from tfopt.cli import main

    monkeypatch.chdir(tmp_path)
    save_dense_model(tmp_path / "m.keras")
    _write(tmp_path, change)
    assert main([*command, "train.epochs=1"] if command[0] == "tune" else command) == 1
    assert capsys.readouterr().err.strip() == f"tfopt: error: {message}"
    assert not list(tmp_path.rglob("baseline.keras")) and not list(tmp_path.rglob("*.tflite"))


def test_optimize_refuses_inputs_of_another_shape(tmp_path):
    import keras

    model = keras.models.load_model(save_dense_model(tmp_path / "m.keras"))
    x, y = np.zeros((20, 6, 6), "float32"), np.arange(20) % 3
    with pytest.raises(DataError) as info:
        tfopt.auto.optimize(model, (x, y), (x, y), max_accuracy_drop=0.01, out_dir=tmp_path / "a")
    assert str(info.value) == (
        "train's samples have shape (6, 6) but 'm' takes (6, 6, 1); add the channel axis, e.g. "
        "x = x[..., None]"
    )


# -- configs: what they say is what runs (issue 25 item 5) ----------------------------------------
def _yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "c.yaml", "--check"],
            "tfopt: config error: c.yaml: duplicate key 'train' at line 3 (first at line 2); "
            "YAML would keep only the last: merge them into one",
        ),
        (
            ["run", "c.yaml", "--check", "model.options.width=-5"],
            "tfopt: config error: model.options: option 'width' of model 'mnist1d_cnn' must be "
            "a whole number >= 1 (a layer size or count). Received: width=-5",
        ),
        (
            ["tune", "c.yaml", "train.strategy=multi_worker"],
            "tfopt: config error: train.strategy: tfopt tune trains each trial in one process "
            "and does not use strategy='multi_worker' (only tfopt run does); set train.strategy: "
            "none, and spread the search over processes with --workers",
        ),
        (
            ["auto", "c.yaml", "--max-accuracy-drop", "0.01"],
            "tfopt: config error: train.strategy: tfopt auto trains each trial in one process "
            "and does not use strategy='multi_worker' (only tfopt run does); set train.strategy: "
            "none, and spread the search over processes with --workers",
        ),
    ],
    ids=["duplicate_key", "negative_width", "tune_multi_worker", "auto_multi_worker"],
)
def test_config_mistakes_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from tfopt.cli import main

    monkeypatch.chdir(tmp_path)
    text = "name: a\ntrain: {epochs: 1}\n"
    if "duplicate key" in message:
        text += "train: {epochs: 2}\n"
    elif argv[0] == "auto":  # auto takes no key=value overrides
        text = "name: a\ntrain: {epochs: 1, strategy: multi_worker}\n"
    _yaml(tmp_path, text)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "runs").exists()


def test_yaml_reads_numbers_as_written_and_finds_installed_tflm(tmp_path):
    cfg = tfopt.config.load(
        _yaml(tmp_path, "train: {learning_rate: 1e-3}\nexport: {formats: [tflm]}\n"),
        overrides=["bench.robust_epsilon=2E-2"],
    )
    assert cfg.train.learning_rate == 0.001 and cfg.bench.robust_epsilon == 0.02
    assert cfg.export.formats == ["tflm"]  # tflite-micro is a distribution, tflite_micro a module


FREEZE_ALL = {
    "run": "tfopt: config error: transfer: freezes every layer with weights ('flatten'..'dense') "
    "and never unfreezes them: the 2 training epochs would change nothing; freeze an earlier "
    "layer (freeze_until), use head: new, or set unfreeze_at_epoch",
    "tune": "tfopt: config error: transfer: freeze_until='dense' with head: keep freezes every "
    "layer with weights ('flatten'..'dense'), and unfreeze_at_epoch=-1 never unfreezes them "
    "within tune.max_epochs=2: those trials would change nothing; freeze an earlier layer "
    "(freeze_until), use head: new, or set unfreeze_at_epoch (and "
    "tune.space.unfreeze_at_epoch) to an earlier epoch",
}


@pytest.mark.parametrize("command", sorted(FREEZE_ALL))
def test_transfer_that_freezes_every_layer_is_refused(tmp_path, monkeypatch, capsys, command):
    from tfopt.cli import main

    monkeypatch.chdir(tmp_path)
    save_dense_model(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", **_good())
    argv = [command, "--model", "m.keras", "--data", "d.npz", "train.epochs=2"]
    argv += ["tune.max_epochs=2"] if command == "tune" else []
    argv += ["transfer.freeze_until=dense", "transfer.head=keep"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == FREEZE_ALL[command]


def test_tune_space_without_never_may_freeze_every_layer_until_an_epoch(tmp_path):
    """The config's freeze_until freezes everything, unfrozen at epoch 1: its space offers no
    'never'; a space that adds it back is refused, naming tune.space."""
    import keras

    from tfopt.config._schema import TransferConfig
    from tfopt.errors import ConfigError
    from tfopt.tune import TrainingHyperModel

    source = keras.models.load_model(save_dense_model(tmp_path / "m.keras"))
    keep = TransferConfig(freeze_until="dense", head="keep", unfreeze_at_epoch=1)
    kw = dict(input_shape=(6, 6, 1), num_classes=3, max_epochs=3, transfer=keep, source=source)
    hm = TrainingHyperModel(None, **kw)
    assert hm.space["unfreeze_at_epoch"] == [1, 2]  # never (-1) and 5 >= max_epochs: dropped
    with pytest.raises(ConfigError, match=r"^tune.space: freeze_until='dense' with head: keep"):
        TrainingHyperModel(
            None, **{**kw, "transfer": TransferConfig(freeze_until="flatten", head="keep")},
            space={"freeze_until": ["flatten", "dense"], "unfreeze_at_epoch": [1, -1]},
        )  # fmt: skip


# -- exports never replace a file without --overwrite (issue 25 item 7, issue 24 item 5) ---------
def _setup_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_dense_model(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", **_good())
    (tmp_path / "notes.md").write_text("my notes\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x.tflite")
    (tmp_path / "link.tflite").symlink_to(tmp_path / "notes.md")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--out", "notes.md"],
            "--out: notes.md already exists; pass --overwrite to replace, or choose another --out",
        ),
        (
            ["--out", "link.tflite"],
            "--out: link.tflite already exists; pass --overwrite to replace, or choose another "
            "--out",
        ),
        (
            ["--out", "dangling"],
            "--out 'dangling' is a dangling symbolic link (to '{tmp}/nowhere/x.tflite'); remove "
            "it or choose another --out",
        ),
        (
            ["--out", "folder"],
            "--out 'folder' is a directory; format tflite writes a file: give a file name, e.g. "
            "--out 'folder/model.tflite'",
        ),
        (
            ["--format", "tflite-int8", "--out", "new.tflite"],
            "--format tflite-int8 calibrates activation ranges on training inputs: pass --data "
            "NAME or FILE.npz (the model's training data, e.g. --data mnist1d), or export a tfopt "
            "QAT model, which carries its ranges",
        ),
    ],
    ids=["existing_file", "symlink_to_file", "dangling_symlink", "directory", "int8_no_data"],
)
def test_export_refuses_outputs_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from tfopt.cli import main

    _setup_export(tmp_path, monkeypatch)
    assert main(["export", "m.keras", *argv]) == 1
    assert capsys.readouterr().err.strip() == "tfopt: error: " + message.format(tmp=tmp_path)
    assert (tmp_path / "notes.md").read_text() == "my notes\n"
    assert {p.name for p in tmp_path.rglob("*.tflite*")} == {"link.tflite"}  # nothing written


def test_export_overwrite_and_suffix(tmp_path, monkeypatch, capsys):
    from tfopt.cli import main

    _setup_export(tmp_path, monkeypatch)
    assert main(["export", "m.keras", "--out", "notes.md", "--overwrite"]) == 0
    assert (tmp_path / "notes.md").read_bytes()[4:8] == b"TFL3"  # asked for: replaced
    assert main(["export", "m.keras", "--out", "out/flat"]) == 0  # no suffix: the format's
    assert (tmp_path / "out" / "flat.tflite").read_bytes()[4:8] == b"TFL3"
    assert "tflite: out/flat.tflite" in capsys.readouterr().out


@pytest.mark.parametrize(
    "out, message",
    [
        (
            "notes.md",
            "path: notes.md already exists; pass overwrite=True to replace, or choose another path",
        ),
        (
            "link.tflite",
            "path: link.tflite already exists; pass overwrite=True to replace, or choose another "
            "path",
        ),
        (
            "dangling",
            "path 'dangling' is a dangling symbolic link (to '{tmp}/nowhere/x.tflite'); remove it "
            "or choose another path",
        ),
        (
            "folder",
            "path 'folder' is a directory; format tflite writes a file: give a file name, e.g. "
            "path 'folder/model.tflite'",
        ),
    ],
    ids=["existing_file", "symlink_to_file", "dangling_symlink", "directory"],
)
def test_export_api_never_replaces_a_file_unless_asked(tmp_path, monkeypatch, out, message):
    import keras

    from tfopt.errors import OutputDirError

    _setup_export(tmp_path, monkeypatch)
    model = keras.models.load_model("m.keras")
    with pytest.raises(OutputDirError) as info:
        tfopt.export.export(model, out)
    assert str(info.value) == message.format(tmp=tmp_path)
    assert (tmp_path / "notes.md").read_text() == "my notes\n"
    if out == "notes.md":  # asked for: replaced
        tfopt.export.export(model, out, overwrite=True)
        assert (tmp_path / "notes.md").read_bytes()[4:8] == b"TFL3"


def test_tflm_exports_into_one_folder_keep_their_own_c_sources(tmp_path, monkeypatch):
    from tfopt.cli import main
    from tfopt.export import parse_c_array

    _setup_export(tmp_path, monkeypatch)
    save_dense_model(tmp_path / "b.keras", outputs=4)
    for name in ("m", "b"):
        argv = ["export", f"{name}.keras", "-f", "tflm", "--data", "d.npz", "--out", f"out/{name}"]
        assert main([*argv, "--min-agreement", "0"]) == 0
    for name in ("m", "b"):
        content = (tmp_path / "out" / f"{name}.tflite").read_bytes()
        cc = tmp_path / "out" / f"{name}_model_data.cc"
        assert parse_c_array(cc.read_text())[1] == content
        assert (tmp_path / "out" / f"{name}_model_data.h").exists()
    assert not (tmp_path / "out" / "model_data.cc").exists()
    assert main(["export", "m.keras", "-f", "tflm", "--data", "d.npz", "--out", "out/m"]) == 1


def test_qat_model_is_never_labelled_float16(tmp_path):
    import keras

    from tfopt.errors import ExportCheckError

    model = tfopt.quantize.qat(keras.models.load_model(save_dense_model(tmp_path / "m.keras")))
    with pytest.raises(ExportCheckError) as info:
        tfopt.export.export(model, tmp_path / "q.tflite", format="tflite-float16")
    assert str(info.value) == (
        "quantization='float16' would label an int8 model: the converter made FULLY_CONNECTED, "
        "RESHAPE compute in int8 (a tfopt QAT model always converts to integer ops); nothing was "
        "written. Export it as tflite-int8, which is this file labelled truthfully"
    )
    assert not (tmp_path / "q.tflite").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--data", "d.npz", "--robust-epsilon", "1e9"],
            "robust_epsilon=1e+09 is at least the inputs' whole range (max - min = {span}): an "
            "L-inf attack that large can turn any input into any other, so its robust accuracy "
            "means nothing; use a radius well inside the range, e.g. robust_epsilon={twentieth} "
            "(5% of it)",
        ),
        (
            ["--max-batch", "0", "--micro-batch", "--concurrency", "2"],
            "max_batch must be an int >= 1. Received: max_batch=0",
        ),
    ],
    ids=["robust_epsilon_beyond_range", "max_batch_zero"],
)
def test_bench_refuses_meaningless_settings_up_front(tmp_path, monkeypatch, capsys, argv, message):
    from tfopt.cli import main

    _setup_export(tmp_path, monkeypatch)
    assert main(["export", "m.keras", "--out", "m.tflite"]) == 0
    capsys.readouterr()
    span = float(np.ptp(_good()["x_test"]))
    assert main(["bench", "m.tflite", *argv]) == 1
    line = message.format(span=f"{span:.3g}", twentieth=f"{span / 20:.2g}")
    assert capsys.readouterr().err.strip() == f"tfopt: error: {line}"
