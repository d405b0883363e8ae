"""TensorFlow Lite for Microcontrollers: the tflm runtime in tfopt.bench, tfopt export --format
tflm (C source), the ops it lacks, and RAM/flash budgets in tfopt auto. The real TFLM runtime."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def exported(identity, labelled, tmp_path_factory):
    from tfopt.export import export

    d = tmp_path_factory.mktemp("tflm")
    x = labelled[0]
    return {
        "int8": export(identity, d / "m_int8.tflite", format="tflite-int8", representative_data=x),
        "float": export(identity, d / "m.tflite").path,
        "tflm": export(identity, d / "c" / "m_tflm.tflite", format="tflm", representative_data=x),
    }


def test_bench_tflm_runtime_accuracy_arena_and_flash(exported, labelled):
    from tfopt.bench import benchmark, format_table

    path = exported["int8"].path
    micro = benchmark(path, labelled, runtime="tflm", concurrency=(), runs=5, warmup=1)
    litert = benchmark(path, labelled, concurrency=(), runs=5, warmup=1)
    assert (micro.runtime, litert.runtime) == ("tflm", "tflite")
    assert micro.accuracy == litert.accuracy == 0.75
    assert micro.micro["tflm_agreement"] == 1.0 and micro.micro["samples"] == 40
    assert micro.micro["ops"] == ["DEQUANTIZE", "FULLY_CONNECTED", "QUANTIZE"]
    assert micro.arena_bytes > 0 and micro.arena_bytes == micro.micro["arena"]["total"]
    assert micro.micro["arena"]["head"] + micro.micro["arena"]["tail"] == micro.arena_bytes
    assert micro.flash_bytes == path.stat().st_size == micro.bytes
    # an int8 model benchmarked in LiteRT reports TFLM's arena and flash too (the same numbers)
    assert (litert.arena_bytes, litert.flash_bytes) == (micro.arena_bytes, micro.flash_bytes)
    assert f"{micro.arena_bytes:,} B" in format_table([litert])


def test_float_models_are_not_measured_in_tflm_unless_asked(exported, labelled):
    from tfopt.bench import benchmark

    res = benchmark(exported["float"], labelled, concurrency=(), runs=2, warmup=0)
    assert res.micro == {} and res.arena_bytes is None
    asked = benchmark(exported["float"], labelled, concurrency=(), runs=2, warmup=0, micro=True)
    assert asked.arena_bytes > 0 and asked.micro["tflm_agreement"] == 1.0


def test_runtime_argument_is_checked(exported, tmp_path):
    from tfopt.bench import runner_for
    from tfopt.bench._runners import check_runtime

    with pytest.raises(ValueError, match=r"^Unrecognized runtime='tflmm'\. Supported runtimes"):
        check_runtime("tflmm")
    assert runner_for(exported["int8"].path, runtime="litert").runtime == "tflite"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"runtime='tflm' cannot run .* runs \.tflite files"):
        runner_for(tmp_path / "sm", runtime="tflm")


def test_ops_tflm_lacks_are_named(tmp_path):
    import keras

    from tfopt import _tflm
    from tfopt.bench import runner_for
    from tfopt.export import export

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="gelu")(inputs))
    path = export(model, tmp_path / "gelu.tflite").path
    assert _tflm.missing_ops(_tflm.model_ops(path.read_bytes())) == ["GELU"]
    with pytest.raises(_tflm.UnsupportedOpsError, match=r"no kernel for GELU\. The model's ops: "):
        runner_for(path, runtime="tflm")
    with pytest.raises(_tflm.UnsupportedOpsError, match="GELU"):
        export(
            model, tmp_path / "g_tflm.tflite", format="tflm", representative_data=np.ones((8, 8))
        )


def test_missing_tflite_micro_says_what_to_install(monkeypatch):
    from tfopt import _tflm
    from tfopt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    with pytest.raises(MissingDependencyError, match=r"pip install tflite-micro"):
        _tflm.import_runtime()
    assert not _tflm.available()


def test_export_tflm_writes_c_source_that_round_trips(exported):
    from tfopt.bench import runner_for
    from tfopt.export import parse_c_array

    art = exported["tflm"]
    content = art.path.read_bytes()
    stem = art.path.stem  # the C sources are named after the .tflite: never shared by two exports
    cc, h = (art.path.parent / f"{stem}_model_data{ext}" for ext in (".cc", ".h"))
    assert art.format == "tflm" and art.info["c_files"] == [str(cc), str(h)]
    text = cc.read_text()
    assert "alignas(16) const unsigned char g_model[] = {" in text
    assert parse_c_array(text) == ("g_model", content)
    assert f"const unsigned int g_model_len = {len(content)};" in text
    header = h.read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", header)
    assert calls == ["AddDequantize", "AddFullyConnected", "AddQuantize"]
    assert "constexpr unsigned int g_model_ops = 3;" in header
    assert f"g_model_arena_used_bytes = {art.info['arena']['total']};" in header
    assert art.check["passed"] and art.check["argmax_agreement"] == 1.0
    assert art.check["tflm_vs_litert_agreement"] == 1.0
    assert art.check["c_source_identical"] and art.check["c_source_runs_identically"]
    assert runner_for(art.path, runtime="tflm").arena_bytes == art.info["arena_bytes"] > 0


def test_parse_c_array_needs_the_aligned_array():
    from tfopt.export import parse_c_array

    with pytest.raises(ValueError, match="alignas"):
        parse_c_array("const unsigned char g_model[] = {0x01};")


# -- budgets in tfopt auto ----------------------------------------------------------------------
def test_parse_size():
    from tfopt._units import parse_size

    assert parse_size("64KB") == parse_size("64 KiB") == parse_size("64k") == 65536
    assert parse_size("1MB") == 1 << 20 and parse_size("1.5MiB") == 3 << 19
    assert parse_size(4096) == parse_size("4096") == parse_size("4096B") == 4096
    for bad in ("64XB", "-1KB", "0", "1.5B", "KB", True, 0):
        with pytest.raises(ValueError, match=r"^max_ram must be a size such as 64KB, 256KiB"):
            parse_size(bad, "max_ram")


def test_cli_and_optimize_reject_bad_budgets(capsys):
    import keras

    import tfopt
    from tfopt.cli import main

    with pytest.raises(SystemExit):
        main(["auto", "--max-accuracy-drop", "0.01", "--max-ram", "64XB"])
    assert "--max-ram must be a size such as 64KB" in capsys.readouterr().err
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    data = (np.zeros((8, 4), "float32"), np.zeros(8, "int32"))
    with pytest.raises(ValueError, match=r"TFLite Micro, which runs int8 models.*target='tflite'"):
        tfopt.auto.optimize(
            model, data, data, tfopt.auto.Budget(0.1, max_ram="4KB"), target="tflite"
        )
    with pytest.raises(ValueError, match="max_flash must be a size"):
        tfopt.auto.Budget(max_accuracy_drop=0.1, max_flash="lots")


def test_auto_rejects_candidates_over_the_ram_budget(tmp_path):
    import keras

    import tfopt
    from tfopt.bench import runner_for

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 40, 1)).astype("float32")
    y = (x[:, :20, 0].mean(-1) > 0).astype("int32")
    model = tfopt.models.get("mnist1d_cnn", input_shape=(40, 1), num_classes=2, width=4, dense=8)
    options = dict(techniques=(), max_trials=1, refine=0)
    budget = tfopt.auto.Budget(0.5, max_ram="1KB", max_flash="1MB")
    res = tfopt.auto.optimize(model, (x, y), (x, y), budget, out_dir=tmp_path / "a", **options)
    (c,) = res.candidates
    arena = runner_for(c["artifact"], runtime="tflm").arena_bytes
    assert c["arena_bytes"] == arena > 1024
    assert c["flash_bytes"] == Path(c["artifact"]).stat().st_size
    assert c["rejected"] == f"arena {arena:,} B > max_ram 1,024 B"
    assert c["tflm_agreement"] >= 0.97
    assert res.best is None
    md = (tmp_path / "a" / "report.md").read_text()
    assert f"rejected: arena {arena:,} B > max_ram 1,024 B" in md
    assert "RAM (TFLite Micro arena) <= 1,024 B" in md
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["front_objectives"]["arena_bytes"] == "min"
    # the budgets steer the search (its score), so a resume with other budgets is refused
    from tfopt.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match=r"settings.budgets.max_ram: 1024 -> 65536"):
        tfopt.auto.optimize(
            model,
            (x, y),
            (x, y),
            tfopt.auto.Budget(0.5, max_ram="64KB"),
            objective="ram",
            out_dir=tmp_path / "a",
            **options,
        )
    # with room to spare the same model fits
    res = tfopt.auto.optimize(
        model,
        (x, y),
        (x, y),
        tfopt.auto.Budget(0.5, max_ram="64KB"),
        objective="ram",
        out_dir=tmp_path / "b",
        **options,
    )
    assert res.best is not None and res.best["rejected"] is None
    assert res.best["arena_bytes"] == arena
    assert "TFLM vs LiteRT" in (tmp_path / "b" / "report.md").read_text()


def test_score_ram_objective_and_memory_budgets():
    from tfopt.tune import score

    m = {"val_accuracy": 0.9, "gzip_bytes": 1024, "latency_ms": 0.1, "arena_bytes": 4096,
         "flash_bytes": 8192}  # fmt: skip
    assert score(m, "ram") == -12.0
    assert score(m, "size", max_ram=4096, max_flash=8192) == -10.0  # fits: no penalty
    assert score(m, "size", max_ram=2048) == -10.0 - (1.0 + 1.0)  # one doubling over
    assert score(m, "size", max_ram=4096, max_flash=2048) == -10.0 - (1.0 + 2.0)
    assert score({**m, "arena_bytes": None}, "size", max_ram=4096) == -10.0 - 11.0


def test_rejected_candidates_are_neither_selected_nor_refined():
    from tfopt.auto._candidate import Candidate, select_best
    from tfopt.auto._refine import refine_queue

    base = {"gzip_bytes": 10_000, "val_accuracy": 0.9, "test_accuracy": 0.9}

    def record(tid, arena, flash, acc=0.9, note=None):
        metrics = {"val_accuracy": acc, "bytes": flash, "gzip_bytes": flash // 2,
                   "latency_ms": 0.1, "arena_bytes": arena, "flash_bytes": flash,
                   "tflm_agreement": None if arena is None else 1.0, "tflm_note": note}  # fmt: skip
        return {"trial_id": tid, "status": "COMPLETED", "stages": [tid], "recipe": {"x": 1},
                "steps": [{}], "metrics": metrics}  # fmt: skip

    from tfopt.auto import Budget

    budgets = Budget(0.02, max_ram=4096, max_flash=16384)
    cands = [
        Candidate.from_record(record("a", 5000, 9000), base, budgets),
        Candidate.from_record(record("b", 3000, 20000), base, budgets),
        Candidate.from_record(
            record("c", None, 8000, note="TFLM has no kernel for GELU"), base, budgets
        ),  # fmt: skip
        Candidate.from_record(record("d", 4096, 16384, acc=0.885), base, budgets),
    ]
    assert [c.rejected for c in cands] == [
        "arena 5,000 B > max_ram 4,096 B",
        "flash 20,000 B > max_flash 16,384 B",
        "RAM not measured in TFLite Micro (TFLM has no kernel for GELU)",
        None,
    ]
    assert all(c.within_budget for c in cands)  # the accuracy budget is a separate verdict
    assert select_best(cands, "gzip_bytes").trial_id == "d"
    assert select_best(cands, "arena_bytes").trial_id == "d"
    queue = refine_queue([c.to_dict() for c in cands], 0.9, 0.02, key="arena_bytes")
    assert [c["trial_id"] for c in queue] == ["d"]


def test_all_dense_channel_scope_prunes_all_layers_then_the_dense_one():
    from tfopt.tune._recipe import describe, recipe_steps

    steps = recipe_steps({"channel_ratio": 0.5, "channel_scope": "all_dense"}, target="tflm")
    assert [(s.type, s.scope, s.ratio) for s in steps] == [
        ("prune_channels", "all", 0.5),
        ("prune_channels", "widest_dense", 0.5),
    ]
    assert describe(steps, "tflm") == [
        "prune_channels(0.5,all)",
        "prune_channels(0.5,dense)",
        "ptq",
    ]
    with pytest.raises(ValueError, match="channel_scope must be 'dense', 'all' or 'all_dense'"):
        recipe_steps({"channel_ratio": 0.5, "channel_scope": "most"})
