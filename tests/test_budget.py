"""tfopt.auto.Budget: one value for the accuracy, RAM, flash, latency and robustness budgets."""

import dataclasses
import json

import numpy as np
import pytest


def test_budget_checks_and_normalizes_once_when_made():
    from tfopt.auto import Budget

    b = Budget(
        0.01, max_ram="64KB", max_flash=2048, max_latency_ms=2, robust_epsilon=np.float32(0.5)
    )
    assert (b.max_accuracy_drop, b.max_ram, b.max_flash, b.max_latency_ms) == (
        0.01,
        65536,
        2048,
        2.0,
    )
    assert type(b.max_latency_ms) is float and type(b.robust_epsilon) is float
    assert b.memory and not Budget(0.01, max_latency_ms=1.0).memory
    assert b.limits() == {"max_ram": 65536, "max_flash": 2048, "max_latency_ms": 2.0,
                          "min_robust_accuracy": None, "robust_epsilon": 0.5}  # fmt: skip
    assert b.text() == ", TFLM arena <= 65,536 B, flash <= 2,048 B, latency p50 <= 2 ms"
    assert Budget(0.01).text() == ""
    assert Budget(0.01, min_robust_accuracy=0.5, robust_epsilon=0.1).text() == (
        ", PGD accuracy >= 0.5 at eps=0.1"
    )
    assert b == Budget(0.01, max_ram=65536, max_flash="2KB", max_latency_ms=2.0, robust_epsilon=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.max_ram = 1
    bad = [
        ({"max_accuracy_drop": 1.0}, r"max_accuracy_drop must be a fraction in \[0, 1\)"),
        ({"max_ram": "64XB"}, "max_ram must be a size such as 64KB"),
        ({"max_flash": 0}, "max_flash must be a size such as 64KB"),
        ({"max_latency_ms": 0}, "max_latency_ms must be a finite number of milliseconds > 0"),
        ({"max_latency_ms": float("inf")}, "max_latency_ms must be a finite number"),
        ({"min_robust_accuracy": 0.5}, "min_robust_accuracy needs robust_epsilon"),
        ({"robust_epsilon": -1.0}, "robust_epsilon must be a number > 0"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            Budget(**{"max_accuracy_drop": 0.01, **kwargs})


def test_optimize_takes_a_budget_or_max_accuracy_drop():
    import tfopt
    from tfopt.auto import Budget

    with pytest.raises(ValueError, match="optimize needs exactly one of budget= .* and max_accura"):
        tfopt.auto.optimize(None, None, None)
    with pytest.raises(ValueError, match="optimize needs exactly one of budget="):
        tfopt.auto.optimize(None, None, None, Budget(0.01), max_accuracy_drop=0.01)
    with pytest.raises(TypeError, match=r"budget must be a tfopt.auto.Budget.*budget=0.01"):
        tfopt.auto.optimize(None, None, None, 0.01)


def test_latency_budget_rejects_slow_candidates_and_costs_in_the_score():
    from tfopt.auto import Budget
    from tfopt.auto._candidate import Candidate, rejection_text, rejections
    from tfopt.tune import score

    base = {"gzip_bytes": 8000, "val_accuracy": 0.9}
    metrics = {"val_accuracy": 0.9, "gzip_bytes": 1000, "bytes": 3000, "latency_ms": 0.5}
    record = {"trial_id": "1", "status": "COMPLETED", "metrics": metrics}
    slow = Candidate.from_record(record, base, Budget(0.01, max_latency_ms=0.25))
    assert slow.within_budget and slow.misses == ["latency"]
    assert slow.rejected == "latency p50 0.500 ms > max_latency_ms 0.25 ms"
    fast = Candidate.from_record(record, base, Budget(0.01, max_latency_ms=0.5))
    assert fast.rejected is None and fast.misses == []
    counts = rejections([slow, fast])
    assert counts["latency"] == 1
    assert rejection_text(counts, 2, {"max_latency_ms": 0.25}) == (
        "of 2 candidate(s) rejected: accuracy 0, latency 1 (one candidate can miss several)"
    )
    m = {"val_accuracy": 0.9, "gzip_bytes": 1024, "latency_ms": 0.5}
    assert score(m, "size", max_latency_ms=0.5) == -10.0  # fits: no penalty
    assert score(m, "size", max_latency_ms=0.125) == -10.0 - (1.0 + 2.0)  # two doublings over


def test_auto_rejects_candidates_over_the_latency_budget(tmp_path, blobs, capfd):
    import keras

    import tfopt
    from tfopt.auto import Budget
    from tfopt.cli import main

    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn", width=4, dense=8)
    train, val = blobs(64, 0), blobs(48, 1)
    # no artifact answers in a nanosecond: the one candidate is rejected, with its latency
    res = tfopt.auto.optimize(
        model, train, val, Budget(0.5, max_latency_ms=1e-6), techniques=(), max_trials=1,
        refine=0, out_dir=tmp_path / "a", verbose=0,
    )  # fmt: skip
    (c,) = res.candidates
    assert c["within_budget"] and c["misses"] == ["latency"]
    assert c["rejected"] == f"latency p50 {c['latency_ms']:.3f} ms > max_latency_ms 1e-06 ms"
    assert res.best is None and res.closest["trial_id"] == c["trial_id"]
    assert res.budget == Budget(0.5, max_latency_ms=1e-6)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["budgets"]["max_latency_ms"] == 1e-6 and report["rejections"]["latency"] == 1
    assert "- latency budget: p50 of one request through the artifact <= 1e-06 ms" in (
        (tmp_path / "a" / "report.md").read_text()
    )
    # the CLI's flag, checked before any data is loaded or model trained
    assert main(["auto", "--max-accuracy-drop", "0.01", "--max-latency", "-1"]) == 1
    assert "tfopt: error: max_latency_ms must be a finite number of milliseconds > 0" in (
        capfd.readouterr().err
    )
