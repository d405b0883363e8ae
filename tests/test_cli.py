"""The CLI and one real end-to-end `tfopt run` (short training, real TFLite export and benchmark)."""

import json
import subprocess
import sys

import pytest


def _tfopt(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "tfopt", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1800,
    )


def test_config_mistake_is_one_line_without_traceback(tmp_path):
    proc = _tfopt("run", "train.epohcs=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tfopt: config error: train.epohcs: unknown key 'epohcs' (did you mean 'epochs'?). "
        "Allowed: ['augment', 'batch_size', 'early_stopping', 'epochs', 'label_smoothing', "
        "'learning_rate', 'lr_schedule', 'momentum', 'optimizer', 'peer_timeout', 'strategy', "
        "'warmup_epochs', 'weight_decay']"
    )
    assert "Traceback" not in proc.stderr


def test_check_prints_the_validated_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: mine\ntrain: {epochs: 3}\n")
    proc = _tfopt("run", str(cfg), "--check", "train.batch_size=32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "name: mine" in proc.stdout
        and "epochs: 3" in proc.stdout
        and "batch_size: 32" in proc.stdout
    )


def test_help_lists_run(tmp_path):
    proc = _tfopt("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "run" in proc.stdout


@pytest.mark.slow
def test_tfopt_run_end_to_end(tmp_path):
    proc = _tfopt(
        "run",
        "train.epochs=3",
        "bench.runs=20",
        "bench.duration_s=0.5",
        "--out",
        "runs/e2e",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[tfopt] [1/4] data: mnist1d" in proc.stdout and "[tfopt] [4/4] bench" in proc.stdout
    run = tmp_path / "runs" / "e2e"
    for name in [
        "baseline.keras",
        "baseline_tflite.tflite",
        "baseline_tflite_int8.tflite",
        "report.json",
        "report.md",
        "report.png",
        "config.json",
    ]:
        assert (run / name).is_file(), name
    events = list((run / "logs" / "baseline").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard logs of the baseline fit"
    report = json.loads((run / "report.json").read_text())
    rows = {(r["stage"], r["format"]): r for r in report["results"]}
    assert set(rows) == {("baseline", "keras"), ("baseline", "tflite"), ("baseline", "tflite-int8")}
    int8, fp32 = rows[("baseline", "tflite-int8")], rows[("baseline", "tflite")]
    assert int8["bytes"] < fp32["bytes"] / 3  # int8 weights
    assert fp32["check"]["passed"] and fp32["check"]["argmax_agreement"] == 1.0
    assert abs(fp32["accuracy"] - rows[("baseline", "keras")]["accuracy"]) < 1e-9
    assert int8["accuracy"] > 0.3  # 3 epochs: well above chance (0.1)
    md = (run / "report.md").read_text()
    assert "| baseline | tflite-int8 |" in md and "gzip size" in md
    # a second run never overwrites the first
    proc2 = _tfopt(
        "run",
        "train.epochs=1",
        "bench.runs=5",
        "bench.duration_s=0.5",
        "export.formats=[tflite]",
        "--out",
        "runs/e2e",
        cwd=tmp_path,
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert (tmp_path / "runs" / "e2e-2" / "report.json").is_file()


@pytest.mark.parametrize("name", ["default.yaml", "prune_qat.yaml", "compress_all.yaml"])
def test_shipped_configs_validate(name):
    from tfopt.config import default_config_path, load

    cfg = load(default_config_path().parent / name)
    assert cfg.name == name.removesuffix(".yaml")


@pytest.mark.slow
def test_recipe_prune_then_qat_end_to_end(tmp_path):
    from tfopt.config import default_config_path

    config = default_config_path().parent / "prune_qat.yaml"
    proc = _tfopt(
        "run",
        str(config),
        "train.epochs=2",
        "steps.0.epochs=2",
        "steps.1.epochs=1",
        "bench.runs=10",
        "bench.duration_s=0.5",
        "--out",
        "r",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[tfopt] [3/6] step 1_prune" in proc.stdout and "[tfopt] [4/6] step 2_qat" in proc.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = {(r["stage"], r["format"]): r for r in report["results"]}
    assert set(rows) >= {("baseline", "tflite"), ("2_qat", "tflite-int8")}
    assert report["steps"]["1_prune"]["global_sparsity"] >= 0.79
    assert (tmp_path / "r" / "logs" / "1_prune").is_dir() and (
        tmp_path / "r" / "logs" / "2_qat"
    ).is_dir()
    int8, fp32 = rows[("2_qat", "tflite-int8")], rows[("baseline", "tflite")]
    assert int8["gzip_bytes"] * 6 < fp32["gzip_bytes"]  # 80% zeros + int8 weights
    assert int8["check"]["passed"]
