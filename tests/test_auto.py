"""tfopt.auto: Pareto front, the optimizer's loop, reports, budgets, interruption, resume, CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import child_env, compile_classifier
from _progress import progress_lines


# -- Pareto front (exact, synthetic points) ------------------------------------------------------
def _p(acc, size, lat):
    return {"accuracy": acc, "gzip_bytes": size, "latency_ms": lat}


def test_pareto_front_exact():
    from tfopt.auto import dominates, pareto_front

    pts = [
        _p(0.90, 100, 1.0),  # 0 front: most accurate
        _p(0.80, 50, 1.0),  # 1 front: smaller
        _p(0.80, 100, 1.0),  # 2 dominated by 0 and 1
        _p(0.70, 50, 0.5),  # 3 front: fastest
        _p(0.90, 100, 1.0),  # 4 equal to 0: kept (equal points do not dominate)
        _p(0.85, 120, 2.0),  # 5 dominated by 0
        _p(0.60, 40, 3.0),  # 6 front: smallest
    ]
    assert pareto_front(pts) == [0, 1, 3, 4, 6]
    assert pareto_front(pts, {"accuracy": "max", "gzip_bytes": "min"}) == [0, 1, 4, 6]
    assert pareto_front(pts, {"gzip_bytes": "min"}) == [6]
    assert pareto_front(pts, {"latency_ms": "max"}) == [6]
    assert pareto_front([]) == []
    assert dominates(pts[0], pts[2]) and not dominates(pts[0], pts[4])
    assert not dominates(pts[1], pts[3]) and not dominates(pts[3], pts[1])
    with pytest.raises(ValueError, match=r"objectives\['accuracy'\] must be 'min' or 'max'"):
        pareto_front(pts, {"accuracy": "up"})
    with pytest.raises(KeyError, match=r"points\[0\] has no 'latency_ms'"):
        pareto_front([{"accuracy": 1.0, "gzip_bytes": 1}])


def test_pareto_front_matches_brute_force_on_random_points():
    from tfopt.auto import pareto_front

    rng = np.random.default_rng(0)
    pts = [_p(*v) for v in rng.integers(0, 5, size=(60, 3)).astype(float)]
    expected = [
        i
        for i, a in enumerate(pts)
        if not any(
            b["accuracy"] >= a["accuracy"]
            and b["gzip_bytes"] <= a["gzip_bytes"]
            and b["latency_ms"] <= a["latency_ms"]
            and (b["accuracy"], b["gzip_bytes"], b["latency_ms"])
            != (a["accuracy"], a["gzip_bytes"], a["latency_ms"])
            for b in pts
        )
    ]
    assert pareto_front(pts) == expected


# -- the optimizer ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(blobs):
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn", width=8, dense=64)
    compile_classifier(model, 3e-3)
    train = blobs(320, 0)
    model.fit(*train, epochs=3, batch_size=32, verbose=0)
    return model, train, blobs(96, 1), blobs(96, 2)


def test_optimize_measures_through_the_artifact_and_writes_the_report(trained, tmp_path, progress):
    import tfopt
    from tfopt.auto._pareto import front_objectives

    model, train, val, test = trained
    weights = [w.copy() for w in model.get_weights()]
    lines = progress
    res = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.05, max_trials=2,
        techniques=("prune",), space={"ft_epochs": 1, "sparsity": [0.5, 0.75]},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run",
        refine=0,
    )  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))  # not mutated
    base = res.baseline
    assert base["val_accuracy"] == tfopt.bench.evaluate(str(tmp_path / "run/baseline.tflite"), val)
    assert base["bytes"] == (tmp_path / "run/baseline.tflite").stat().st_size
    assert [c["status"] for c in res.candidates] == ["COMPLETED", "COMPLETED"]
    assert [c["recipe"]["sparsity"] for c in res.candidates] == [0.5, 0.75]
    assert len([ln for ln in lines if ln.startswith("[auto] trial ")]) == 2
    for c in res.candidates:
        assert c["val_accuracy"] == tfopt.bench.evaluate(c["artifact"], val)
        assert c["test_accuracy"] == tfopt.bench.evaluate(c["artifact"], test)
        assert c["gzip_bytes"] == tfopt.bench.file_sizes(c["artifact"])["gzip_bytes"]
        assert c["ratio"] == base["gzip_bytes"] / c["gzip_bytes"]  # gzip-to-gzip
        assert c["within_budget"] == (base["val_accuracy"] - c["val_accuracy"] <= 0.05 + 1e-12)
        assert c["test_drop"] == base["test_accuracy"] - c["test_accuracy"]
        assert c["phase"] == "search" and c["refined_from"] is None
    points = [{"accuracy": c["val_accuracy"], "gzip_bytes": c["gzip_bytes"],
               "latency_ms": c["latency_ms"], "arena_bytes": c["arena_bytes"],
               "flash_bytes": c["flash_bytes"]} for c in res.candidates]  # fmt: skip
    objectives = front_objectives(points)  # RAM and flash too when TFLite Micro measured them
    front = tfopt.auto.pareto_front(points, objectives)
    assert res.front == [res.candidates[i]["trial_id"] for i in front]
    ok = [c for c in res.candidates if c["within_budget"]]
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["front"] == res.front and len(report["candidates"]) == 2
    assert (tmp_path / "run/report.md").read_text().startswith("# tfopt auto")
    assert (tmp_path / "run/pareto.png").read_bytes()[:4] == b"\x89PNG"
    if ok:
        best = min(ok, key=lambda c: (c["gzip_bytes"], -c["val_accuracy"]))
        assert res.best["trial_id"] == best["trial_id"]
        assert res.best_path.read_bytes() == Path(best["artifact"]).read_bytes()
        assert tfopt.bench.evaluate(str(res.best_path), val) == best["val_accuracy"]
    else:
        assert res.best is None and not (tmp_path / "run/best.tflite").exists()

    # resume: the same out_dir with one more trial runs only the new one
    lines.clear()
    again = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.05, max_trials=3,
        techniques=("prune",), space={"ft_epochs": 1, "sparsity": [0.5, 0.75]},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run",
        refine=0,
    )  # fmt: skip
    assert any("resuming: 2 trial(s) already done" in ln for ln in lines)
    assert len([ln for ln in lines if ln.startswith("[auto] trial ")]) == 1
    assert [c["trial_id"] for c in again.candidates] == ["0", "1", "2"]


def _cand(tid, val, size, stages, **kw):
    return {"trial_id": tid, "status": "COMPLETED", "val_accuracy": val, "gzip_bytes": size,
            "latency_ms": 1.0, "stages": stages, **kw}  # fmt: skip


def test_refine_queue_and_recipe_are_exact():
    from tfopt.auto import REFINE_EPOCHS, refine_queue, refine_recipe

    cands = [
        _cand("0", 0.90, 4000, ["a"]),  # within budget (drop 0)
        _cand("1", 0.88, 1000, ["b"]),  # 1.5 pt over budget: rank 1000 * 2**1.5 = 2828
        _cand("2", 0.86, 1000, ["b"]),  # same stages, less accurate: dropped
        _cand("3", 0.895, 3000, ["c"]),  # within budget: rank 3000
        _cand("4", 0.85, 500, ["d"]),  # 4.5 pt over, past the 3 pt margin
        _cand("5", 0.875, 900, ["e"]),  # 2 pt over: rank 900 * 4 = 3600
        {"trial_id": "6", "status": "FAILED", "stages": []},
    ]
    q = refine_queue(cands, 0.90, 0.005)
    assert [c["trial_id"] for c in q] == ["1", "3", "5", "0"]
    best = cands[3]  # only candidates smaller than the best are worth refining
    assert [c["trial_id"] for c in refine_queue(cands, 0.90, 0.005, best=best)] == ["1", "5"]
    refined = _cand("r000", 0.9, 990, ["b", "distill(T=4)"], refined_from="1")
    assert [c["trial_id"] for c in refine_queue(cands + [refined], 0.90, 0.005)] == ["3", "5", "0"]
    assert [c["trial_id"] for c in refine_queue(cands, 0.90, 0.005, margin=0.0)] == ["3", "0"]

    recipe = {"sparsity": 0.9, "epochs": 12, "distill": False, "temperature": 1.0, "alpha": 0.9}
    assert refine_recipe(recipe, ("prune",)) == {**recipe, "epochs": 12 * REFINE_EPOCHS}
    assert refine_recipe(recipe, ("prune", "distill")) == {
        "sparsity": 0.9, "epochs": 12 * REFINE_EPOCHS, "distill": True, "temperature": 2.0,
        "alpha": 0.1,
    }  # fmt: skip
    own = {**recipe, "distill": True}  # a distilling recipe keeps its temperature and alpha
    assert refine_recipe(own, ("prune", "distill")) == {**own, "epochs": 12 * REFINE_EPOCHS}
    assert recipe["epochs"] == 12  # not mutated
    # screened on 8,192 of 54,000 samples: 3x the screening's steps, not 3x its epochs on 6.6x
    # the data (a Fashion-MNIST refinement was estimated beyond the hour and never ran)
    assert refine_recipe(recipe, ("prune",), 8192 / 54000)["epochs"] == 6  # ceil(36 * 0.152)
    assert refine_recipe(recipe, ("prune",), 0.001)["epochs"] == 1


def test_selection_uses_val_only_and_refinement_is_recorded(
    trained, tmp_path, monkeypatch, progress
):
    """Measurements are real, then rewritten: every test accuracy becomes 0 and the screening
    trials' val accuracy 5 pt below the baseline (within the 10 pt budget). The smaller screened
    candidate is refined; the refined one, measured honestly on val, is within budget and selected
    (refined candidates are final) although it fails the test data (test never takes part), and
    the report shows its test drop."""
    import tfopt
    import tfopt.export._measure as measure
    import tfopt.tune._tuner as tuner_mod

    model, train, val, test = trained
    tfopt.export.tflite(model, tmp_path / "float.tflite", quantization="float32")
    base_val = tfopt.bench.evaluate(str(tmp_path / "float.tflite"), val)
    real = measure.export_and_measure

    def rewrite(*args, **kwargs):  # the candidates' measurements (the baseline's stand)
        measured = real(*args, **kwargs)
        m = measured.metrics
        m["test_accuracy"] = 0.0
        m["test_correct"] = measure.pack_correct(np.zeros(len(test[1]), bool))
        if "search" in Path(m["path"]).parts:
            m["val_accuracy"] = base_val - 0.05
            m["val_correct"] = None  # no per-sample results: no paired interval
        return measured

    monkeypatch.setattr(tuner_mod, "export_and_measure", rewrite)
    lines = progress
    res = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.1, max_trials=2, refine=1,
        techniques=("prune", "distill"), space={"ft_epochs": 1, "distill": False},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run",
    )  # fmt: skip
    base = res.baseline
    assert base["val_accuracy"] == base_val
    search = [c for c in res.candidates if c["phase"] == "search"]
    refined = [c for c in res.candidates if c["phase"] == "refine"]
    assert [c["trial_id"] for c in search] == ["0", "1"] and len(refined) == 1
    assert all(c["within_budget"] for c in search)
    r = refined[0]
    assert r["trial_id"] == "r000" and r["status"] == "COMPLETED"
    source = tfopt.auto.refine_queue(search, base_val, 0.1)[0]
    assert source["gzip_bytes"] == min(c["gzip_bytes"] for c in search)  # equal val: smaller
    assert r["refined_from"] == source["trial_id"]
    assert r["recipe"]["epochs"] == 3 * source["recipe"]["epochs"] == 3
    assert r["recipe"]["distill"] is True and "distill(T=2)" in r["stages"]
    assert r["val_accuracy"] == tfopt.bench.evaluate(r["artifact"], val)
    assert any(ln.startswith("[auto] trial r000") and f"(refines {source['trial_id']})" in ln
               for ln in lines)  # fmt: skip
    assert any(ln.startswith("[auto] refinement: 2 candidate(s)") for ln in lines)
    # the refined candidate passes val and fails test; it is selected all the same
    assert r["within_budget"] and r["test_accuracy"] == 0.0
    assert res.best["trial_id"] == "r000" and res.best["test_drop"] == base["test_accuracy"]
    assert res.best_path.read_bytes() == Path(r["artifact"]).read_bytes()
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["refinement"]["runs"] == 1 and report["refinement"]["stopped"] == "limit"
    assert report["selection"] == (
        "val accuracy within budget, then smallest gzip_bytes (refined candidates first); test "
        "accuracy is measured and reported only"
    )
    md = (tmp_path / "run/report.md").read_text()
    assert "selection uses the validation data only" in md
    assert f"| r000 | ok | {' + '.join(r['stages'])} (refines {source['trial_id']}) |" in md
    # the best's test delta, paired with the baseline on the same samples, with its interval
    t = res.best["test_delta"]
    assert t["delta"] == -base["test_accuracy"] and t["only_b"] == 0 and t["n"] == len(test[1])
    assert t["only_a"] == round(base["test_accuracy"] * len(test[1])) and t["high"] < 0
    interval = f"{100 * t['delta']:+.2f} pt [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]"
    assert f"| 0.0000 ({interval}) |" in md and f"Its test delta: {interval} over 96" in md
    assert all(c["val_delta"] is None for c in search)  # rewritten: no per-sample results
    assert r["val_delta"]["delta"] == pytest.approx(r["val_accuracy"] - base_val, abs=1e-12)
    assert any("(not used to select)" in ln for ln in lines if ln.startswith("[auto] best:"))

    # resume: the refinement run is read back, not repeated (the limit is reached)
    lines.clear()
    again = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.1, max_trials=2, refine=1,
        techniques=("prune", "distill"), space={"ft_epochs": 1, "distill": False},
        seeds=[{"sparsity": 0.5}, {"sparsity": 0.75}], out_dir=tmp_path / "run",
    )  # fmt: skip
    assert any("resuming: 3 trial(s) already done" in ln for ln in lines)
    assert not [ln for ln in lines if ln.startswith("[auto] trial ")]
    assert [c["trial_id"] for c in again.candidates] == ["0", "1", "r000"]
    assert again.best["trial_id"] == "r000"


def _bad_int8_model():
    """Logits with one huge constant: int8 loses the small differences, so the export check fails."""
    import keras

    inputs = keras.Input((40, 1))
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    w, b = model.layers[-1].get_weights()
    b[:] = 0.0
    b[9] = -1000.0
    model.layers[-1].set_weights([w * 0.001, b])
    return model


def test_no_candidate_within_budget_still_writes_the_report(tmp_path, blobs, progress):
    import tfopt

    data = blobs(64, 0)
    lines = progress
    res = tfopt.auto.optimize(
        _bad_int8_model(), data, data, max_accuracy_drop=0.0, techniques=(), max_trials=3,
        out_dir=tmp_path / "bad",
    )  # fmt: skip
    assert res.best is None and res.best_path is None
    assert [c["status"] for c in res.candidates] == ["FAILED"]  # PTQ only: one recipe to try
    assert "ExportCheckError" in res.candidates[0]["error"]
    assert res.stopped == "search_space_exhausted"
    assert any("trial 0  FAILED" in ln for ln in lines)
    md = (tmp_path / "bad/report.md").read_text()
    assert "**No candidate met the budgets.**" in md
    assert res.rejections == {
        "accuracy": 0,
        "RAM": 0,
        "flash": 0,
        "latency": 0,
        "robustness": 0,
        "failed": 1,
    }
    assert "Rejections per budget: of 1 candidate(s) rejected: accuracy 0; 1 failed" in md
    assert res.closest is None and not (tmp_path / "bad/closest_over_budget.tflite").exists()
    assert json.loads((tmp_path / "bad/report.json").read_text())["best"] is None
    assert (tmp_path / "bad/pareto.png").exists() and not (tmp_path / "bad/best.tflite").exists()


def test_time_budget_and_interrupt_leave_a_report(trained, tmp_path):
    import tfopt

    model, train, val, _ = trained
    res = tfopt.auto.optimize(
        model,
        train,
        val,
        max_accuracy_drop=0.01,
        time_budget=1e-3,
        techniques=(),
        out_dir=tmp_path / "tb",
        verbose=0,
    )
    assert res.stopped == "time_budget" and res.candidates == []
    assert json.loads((tmp_path / "tb/report.json").read_text())["stopped"] == "time_budget"

    def ctrl_c(line):  # a real SIGINT while the first trial reports
        if line.startswith("[auto] trial"):
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, whatever an earlier test in this worker process installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with progress_lines(on_line=ctrl_c):
        res = tfopt.auto.optimize(
            model,
            train,
            val,
            max_accuracy_drop=0.5,
            max_trials=5,
            techniques=("prune",),
            space={"ft_epochs": 1},
            out_dir=tmp_path / "ki",
        )
    signal.signal(signal.SIGINT, previous)
    assert res.stopped == "interrupted"
    assert len(res.candidates) == 1 and res.best["trial_id"] == "0"
    assert (tmp_path / "ki/best.tflite").read_bytes() == Path(
        res.candidates[0]["artifact"]
    ).read_bytes()
    assert json.loads((tmp_path / "ki/report.json").read_text())["stopped"] == "interrupted"


def test_robustness_is_a_constraint_measured_through_the_artifact(trained, tmp_path):
    import tfopt

    model, train, val, _ = trained
    budget = tfopt.auto.Budget(0.5, min_robust_accuracy=0.99, robust_epsilon=1.0)
    res = tfopt.auto.optimize(
        model, train, val, budget, techniques=(), max_trials=1, refine=0,
        out_dir=tmp_path / "r", verbose=0,
    )  # fmt: skip
    (c,) = res.candidates
    # PGD-10 made on the candidate's Keras model, run through its int8 artifact
    x_adv = tfopt.robust.pgd(tfopt.models.load(c["keras_model"]), *val, epsilon=1.0, steps=10)
    robust = tfopt.bench.evaluate(c["artifact"], (x_adv, val[1]))
    assert c["robust_accuracy"] == robust < 0.99
    assert c["rejected"] == (
        f"robust accuracy {robust:.4f} < min_robust_accuracy 0.99 (PGD-10 L-inf eps=1, transfer "
        f"from Keras model {model.name!r}, through tflite)"
    )
    assert c["within_budget"] and res.best is None  # rejected: never selected
    assert (
        "- robustness budget: val accuracy under PGD-10 (L-inf eps=1"
        in (tmp_path / "r/report.md").read_text()
    )
    with pytest.raises(ValueError, match="min_robust_accuracy needs robust_epsilon"):
        tfopt.auto.Budget(max_accuracy_drop=0.1, min_robust_accuracy=0.5)
    with pytest.raises(ValueError, match=r"min_robust_accuracy must be a fraction in \[0, 1\]"):
        tfopt.auto.Budget(max_accuracy_drop=0.1, min_robust_accuracy=50, robust_epsilon=0.1)


def test_optimize_argument_errors(trained):
    import tfopt

    model, train, val, _ = trained
    with pytest.raises(ValueError, match=r"max_accuracy_drop must be a fraction in \[0, 1\)"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=5)
    with pytest.raises(ValueError, match="Unrecognized objective='accuracy'"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, objective="accuracy")
    with pytest.raises(ValueError, match="Unrecognized target='onnx'"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, target="onnx")
    with pytest.raises(ValueError, match="time_budget must be a finite number of seconds > 0"):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, time_budget=0)
    with pytest.raises(ValueError, match=r"val\[0\] has \d+ samples but val\[1\] has 3 labels"):
        tfopt.auto.optimize(model, train, (val[0], val[1][:3]), max_accuracy_drop=0.01)
    with pytest.raises(TypeError, match="must be a keras.Model"):
        tfopt.auto.optimize("model.keras", train, val, max_accuracy_drop=0.01)
    with pytest.raises(TypeError) as info:  # the budgets are one value (issue 23)
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, max_ram="64KB")
    assert str(info.value) == (
        "optimize takes its budgets as one value: budget=tfopt.auto.Budget(max_accuracy_drop=..., "
        "max_ram='64KB'). Received: max_ram='64KB'"
    )
    with pytest.raises(
        TypeError, match=r"^optimize\(\) got an unexpected keyword argument 'max_trails'$"
    ):
        tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.01, max_trails=3)


def test_cli_auto_bad_input_is_one_line(tmp_path):
    out = tmp_path / "cli"
    env = child_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tfopt", "auto", "--max-accuracy-drop", "1.5"]
    bad = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=1800)  # fmt: skip
    assert bad.returncode == 1
    assert "max_accuracy_drop must be a fraction in [0, 1)" in bad.stderr
    bad = subprocess.run(cmd[:-1] + ["0.01", "--techniques", "prune,magic"], capture_output=True,
                         text=True, env=env, timeout=1800)  # fmt: skip
    assert bad.returncode == 1 and "Unrecognized technique 'magic'" in bad.stderr
    assert not out.exists()
    # a whole `tfopt auto` run through the CLI: test_auto_two_workers_on_loopback_share_tunes_launcher
    # (the entry point in process; `python -m tfopt` itself: tests/test_cli.py)


@pytest.mark.slow
def test_auto_two_workers_on_loopback_share_tunes_launcher(tmp_path, capfd, blobs):
    """`tfopt auto --workers 2`: a chief and two worker processes screen (the same launcher as
    `tfopt tune --workers`), then this process refines and reports."""
    from tfopt.cli import main

    x, y = blobs(160, 0)
    np.savez(tmp_path / "blobs.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    out = tmp_path / "d"
    code = main(["auto", "--max-accuracy-drop", "0.99", "--data", str(tmp_path / "blobs.npz"),
                 "--epochs", "1", "--max-trials", "2", "--techniques", "prune", "--target",
                 "tflite", "--workers", "2", "--out", str(out)])  # fmt: skip
    printed = capfd.readouterr().out
    assert code == 0, printed[-3000:]
    assert "[auto] chief pid" in printed and "[auto] worker tuner1 pid" in printed
    # two screening trials, then one refinement (the default without --time-budget: one run per
    # five trials, at least one), which is final
    assert "[auto] trial r000 " in printed and "[auto] best: trial r000" in printed
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("search/trial_*/tfopt.json"))]
    assert [r["trial_id"] for r in runs] == ["0", "1"]
    assert {r["tuner_id"] for r in runs} <= {"tuner0", "tuner1"}  # the workers ran them
    report = json.loads((out / "report.json").read_text())
    assert [c["trial_id"] for c in report["candidates"]] == ["0", "1", "r000"]
    assert report["refinement"]["runs"] == 1 and (out / "best.tflite").exists()
    oracle = json.loads((out / "search" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {}


def test_auto_worker_of_an_unreachable_chief_is_a_one_line_error(tmp_path, capsys):
    from tfopt.cli import main
    from tfopt.tune._distributed import free_port

    port = free_port()
    code = main(["auto", "--max-accuracy-drop", "0.1", "--chief", f"127.0.0.1:{port}",
                 "--connect-timeout", "1", "--out", str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert f"cannot reach the search chief at 127.0.0.1:{port} within 1 s" in err
    assert not (tmp_path / "w").exists()  # nothing trained or written
    assert main(["auto", "--max-accuracy-drop", "0.1", "--workers", "2", "--chief", "h:1"]) == 1
    assert "cannot be combined with --chief" in capsys.readouterr().err


def test_auto_baseline_is_seeded_before_it_is_built(tmp_path, blobs):
    """The same config gives the same initial baseline, whatever ran before in the process."""
    import keras

    from tfopt import config
    from tfopt.cli._auto import baseline_model
    from tfopt.data import from_arrays

    cfg = config.load(overrides=["train.epochs=0", "seed=3"])
    x, y = blobs(32, 0)
    data = from_arrays(x, y, x_test=x, y_test=y)
    weights = []
    for k in range(2):
        keras.utils.set_random_seed(100 + k)  # disturb the global RNG state
        keras.random.uniform((7,))
        model = baseline_model(cfg, data, tmp_path / f"run{k}")
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_auto_writes_a_recipe_that_tfopt_run_replays(tmp_path):
    """`tfopt auto` -> recipe.yaml -> `tfopt run recipe.yaml`: the same artifact within 1 pt of
    test accuracy and 10% of gzip size (the recipe's model is auto's saved baseline and its
    stages start from the same seed, so only thread-level nondeterminism is left)."""
    import yaml

    import tfopt
    from tfopt import cli, config
    from tfopt.cli._auto import baseline_model

    rng = np.random.default_rng(5)
    centers = rng.normal(size=(10, 40, 1)).astype("float32")
    y, yt = rng.integers(0, 10, 400).astype("int32"), rng.integers(0, 10, 500).astype("int32")
    x = centers[y] + 0.8 * rng.normal(size=(400, 40, 1)).astype("float32")
    xt = centers[yt] + 0.8 * rng.normal(size=(500, 40, 1)).astype("float32")
    np.savez(tmp_path / "blobs.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "replay",
                "seed": 3,
                "data": {"name": str(tmp_path / "blobs.npz"), "val_fraction": 0.2},
                "model": {"name": "mnist1d_cnn", "options": {"width": 8, "dense": 32}},
                "train": {"epochs": 6, "batch_size": 32, "learning_rate": 0.003},
            }
        )
    )
    out = tmp_path / "auto"
    # what `tfopt auto c.yaml` does, with a tiny search space (the CLI has no --space)
    cfg = config.load(tmp_path / "c.yaml")
    data = tfopt.data.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    model = baseline_model(cfg, data, out)
    res = tfopt.auto.optimize(
        model, data.train, data.val, test=data.test, max_accuracy_drop=0.3, max_trials=1,
        refine=0, techniques=("prune", "quantize"), space={"ft_epochs": 8},
        seeds=[{"sparsity": 0.5, "quantization": "qat"}], out_dir=out, seed=cfg.seed,
        run_config=cfg, verbose=0,
    )  # fmt: skip
    assert res.recipe == out / "recipe.yaml"
    report = json.loads((out / "report.json").read_text())
    best = report["best"]
    assert best["ratio"] == report["baseline"]["gzip_bytes"] / best["gzip_bytes"]
    recipe = config.load(out / "recipe.yaml")  # a valid `tfopt run` config
    assert Path(recipe.model.path).resolve() == (out / "baseline.keras").resolve()
    assert recipe.train.epochs == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["path"] == "baseline.keras"
    assert recipe.seed == 3 and recipe.data.name == str(tmp_path / "blobs.npz")
    assert [s.type for s in recipe.steps] == [s["type"] for s in best["steps"]] == ["prune", "qat"]
    assert recipe.export.formats == ["tflite-int8"]

    replay = ["run", str(out / "recipe.yaml"), "--out", str(tmp_path / "replay")]
    assert cli.main([*replay, "bench.duration_s=0.5"]) == 0
    rows = json.loads((tmp_path / "replay/report.json").read_text())["results"]
    row = next(r for r in rows if r["format"] == "tflite-int8")
    assert abs(row["accuracy"] - best["test_accuracy"]) <= 0.01
    assert abs(row["gzip_bytes"] - best["gzip_bytes"]) <= 0.1 * best["gzip_bytes"]


def test_auto_oracle_stops_the_search_itself(tmp_path):
    """The oracle ends the screening from populate_space (status STOPPED) and says why: after
    `max_failures` failed trials in a row, or when the next trial would overrun the deadline."""
    import time

    import keras_tuner

    from tfopt.auto import AutoOracle

    class Failing(keras_tuner.Tuner):
        def run_trial(self, trial, **kwargs):
            trial.hyperparameters.Float("x", -2.0, 2.0)
            raise keras_tuner.errors.FailedTrialError("cannot export")

    def oracle(**kw):
        space = keras_tuner.HyperParameters()
        space.Float("x", -2.0, 2.0)
        return AutoOracle(objective=keras_tuner.Objective("score", "max"), max_trials=10,
                          hyperparameters=space, seed=0, **kw)  # fmt: skip

    o = oracle(max_failures=2)
    Failing(oracle=o, directory=str(tmp_path), project_name="f").search(verbose=0)
    assert o.stop_reason == "too_many_failures" and len(o.trials) == 2

    o = oracle()
    o.deadline = time.monotonic() + 100.0
    o.add_duration(200.0)  # a typical trial takes longer than what is left
    Failing(oracle=o, directory=str(tmp_path), project_name="d").search(verbose=0)
    assert o.stop_reason == "time_budget" and len(o.trials) == 0


# -- safe first, paired selection, budgets named in the failure -----------------------------------
def test_one_trial_search_returns_the_int8_model_of_the_unchanged_model(
    trained, tmp_path, progress
):
    """The default seeds start with int8 PTQ of the unchanged model: one trial is a result."""
    import tfopt
    from tfopt._stats import correct
    from tfopt.bench._runners import runner_for
    from tfopt.export._measure import pack_correct

    model, train, val, test = trained
    lines = progress
    res = tfopt.auto.optimize(
        model, train, val, test=test, max_accuracy_drop=0.05, max_trials=1,
        out_dir=tmp_path / "one",
    )  # fmt: skip
    (c,) = res.candidates  # no refinement: PTQ has nothing to fine-tune longer
    assert c["stages"] == ["ptq"] and c["steps"] == [] and c["recipe"]["sparsity"] == 0.0
    assert (
        res.best["trial_id"] == "0"
        and res.best_path.read_bytes() == Path(c["artifact"]).read_bytes()
    )
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(res.best_path)).get_tensor_details()
    assert np.int8 in {t["dtype"] for t in tensors} and c["bytes"] < res.baseline["bytes"] / 1.9
    # paired with the baseline on the same samples: the counts are the samples they disagree on
    base = res.baseline
    runner = runner_for(base["artifact"])
    assert base["val_correct"] == pack_correct(correct(runner.predict(val[0]), val[1]))
    cand = correct(runner_for(c["artifact"]).predict(val[0]), val[1])
    base_right = correct(runner.predict(val[0]), val[1])
    d = c["val_delta"]
    assert (d["only_a"], d["only_b"]) == (
        int((base_right & ~cand).sum()),
        int((cand & ~base_right).sum()),
    )
    assert d["delta"] == pytest.approx(c["val_accuracy"] - base["val_accuracy"], abs=1e-12)
    assert res.closest is None and not (tmp_path / "one/closest_over_budget.tflite").exists()
    assert any(ln.startswith("[auto] val split: 96 samples, resolution 1.04 pt") for ln in lines)


def test_a_model_whose_int8_calibration_crashes_gets_the_calibration_free_target(tmp_path):
    """TFLite's int8 calibrator dies (SIGSEGV, in the worker) on a GRU: with no target given,
    auto searches tflite-dynamic and returns a model instead of failing every candidate."""
    import keras

    import tfopt

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12, 4)).astype("float32")
    y = (x[:, :, 0].mean(axis=1) > 0).astype("int64")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 4))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GRU(8, name="gru")(inputs)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:128], y[:128], epochs=3, batch_size=32, verbose=0)
    res = tfopt.auto.optimize(
        model, (x[:128], y[:128]), (x[128:], y[128:]), max_accuracy_drop=0.3, max_trials=1,
        refine=0, techniques=(), out_dir=tmp_path / "gru",
    )  # fmt: skip
    report = json.loads(Path(res.report["json"]).read_text())
    assert report["target"] == "tflite-dynamic"
    assert "NativeCrashError" in report["target_note"] and "SIGSEGV" in report["target_note"]
    assert res.best is not None and res.best_path.is_file()
    assert not (tmp_path / "gru/int8_probe.tflite").exists()
    # the report splits peak memory: the search process and the converter's worker
    assert report["resident_mb"]["search"] > 100 and report["resident_mb"]["converter_worker"] > 100


def test_default_seeds_start_safe_and_qat_follows_only_a_ptq_that_misses(trained, tmp_path):
    import tfopt
    from tfopt.auto._search import SAFE_FIRST, default_seeds
    from tfopt.tune import CompressionHyperModel

    model, train, val, _ = trained
    seeds = default_seeds(CompressionHyperModel(model=model))
    # lowrank is opt-in, so not in the default space
    assert seeds[0] == {k: v for k, v in SAFE_FIRST[0].items() if k != "lowrank_energy"}
    assert seeds[1]["quantization"] == "qat" and seeds[1]["weight_bits"] == "8"
    assert seeds[1]["sparsity"] == seeds[1]["channel_ratio"] == 0.0
    small = default_seeds(
        CompressionHyperModel(model=model), tfopt.auto.Budget(0.05, max_flash=1000)
    )
    assert small[:2] == seeds[:2]  # a memory budget changes what follows, not the start

    kw = dict(techniques=("quantize", "prune"), space={"ft_epochs": 1}, max_trials=2, refine=0,
              verbose=0)  # fmt: skip

    def follows(c, seed):  # the trial ran this seed (the keys that tell the seeds apart)
        keys = ("sparsity", "prune_scope", "quantization", "weight_bits")
        return all(c["recipe"][k] == seed[k] for k in keys if k in seed)

    fits = tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.05, out_dir=tmp_path / "a",
                               **kw)  # fmt: skip
    used = fits.extra["seeds"]
    assert fits.candidates[0]["within_budget"] and follows(fits.candidates[0], used[0])
    # PTQ fits: QAT of the unchanged model would be the same size; the next seed runs instead
    assert used[1]["quantization"] == "qat" and used[1]["sparsity"] == 0.0
    assert follows(fits.candidates[1], used[2]) and fits.candidates[1]["recipe"]["sparsity"] > 0
    # resumed: the QAT seed stays dropped, so the next trial is the next seed, not a repeat
    again = tfopt.auto.optimize(model, train, val, max_accuracy_drop=0.05, out_dir=tmp_path / "a",
                                **{**kw, "max_trials": 3})  # fmt: skip
    assert follows(again.candidates[2], used[3]) and len(again.candidates) == 3
    assert again.candidates[2]["recipe"] != again.candidates[1]["recipe"]
    misses = tfopt.auto.optimize(_bad_int8_model(), train, val, max_accuracy_drop=0.05,
                                 out_dir=tmp_path / "b", **kw)  # fmt: skip
    assert misses.candidates[0]["status"] == "FAILED"  # PTQ misses: QAT of it comes next
    assert misses.candidates[1]["recipe"]["quantization"] == "qat"
    assert misses.candidates[1]["recipe"]["weight_bits"] == "8"
    assert misses.candidates[1]["recipe"]["sparsity"] == 0.0


def test_paired_delta_resolution_and_rejections_are_exact():
    from tfopt._stats import paired_delta
    from tfopt.auto import Budget
    from tfopt.auto._candidate import (
        Candidate,
        closest,
        rejection_text,
        rejections,
        split_resolution,
    )
    from tfopt.export._measure import pack_correct, unpack_correct

    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.9
    cand = base.copy()
    cand[np.flatnonzero(base)[:6]] = False  # 6 samples only the baseline gets right
    cand[np.flatnonzero(~base)[:2]] = True  # 2 only the candidate gets right
    assert np.array_equal(unpack_correct(pack_correct(cand), 400), cand)
    baseline = {"val_accuracy": float(base.mean()), "gzip_bytes": 8000, "val_samples": 400,
                "val_correct": pack_correct(base)}  # fmt: skip
    record = {"trial_id": "3", "status": "COMPLETED", "metrics": {
        "val_accuracy": float(cand.mean()), "gzip_bytes": 1000, "bytes": 3000, "latency_ms": 0.1,
        "val_correct": pack_correct(cand), "flash_bytes": 3000}}  # fmt: skip
    c = Candidate.from_record(record, baseline, Budget(0.005, max_flash=2000))
    assert c.val_delta == paired_delta(base, cand).to_dict()
    assert (c.val_delta["only_a"], c.val_delta["only_b"], c.val_delta["delta"]) == (6, 2, -0.01)
    assert c.test_delta is None  # no test split measured
    assert not c.within_budget and c.misses == ["accuracy", "flash"]
    c2 = Candidate.from_record({**record, "trial_id": "4"}, baseline, Budget(0.02, max_flash=2000))
    assert c2.within_budget and c2.misses == ["flash"]
    failed = Candidate(trial_id="5", status="FAILED")
    counts = rejections([c, c2, failed])
    assert counts == {
        "accuracy": 1,
        "RAM": 0,
        "flash": 2,
        "latency": 0,
        "robustness": 0,
        "failed": 1,
    }
    assert rejection_text(counts, 3, {"max_flash": 2000}) == (
        "of 3 candidate(s) rejected: accuracy 1, flash 2 (one candidate can miss several); 1 "
        "failed to export or measure"
    )
    assert closest([c, c2, failed]) is c2  # fewer budgets missed

    r = split_resolution(400, 0.93, 0.005)  # MNIST-1D's val split against a half-point budget
    assert r["resolution"] == 1 / 400 and not r["resolves"]
    assert r["noise"] == pytest.approx(1.959963984540054 * (0.07 / 400) ** 0.5)
    assert r["needed"] == int(np.ceil(0.07 * (1.96 / 0.005) ** 2)) == 10757
    assert split_resolution(20000, 0.93, 0.005)["resolves"]
    assert split_resolution(400, 1.0, 0.0)["needed"] is None


def test_cli_nothing_fits_writes_the_closest_and_names_the_budgets(tmp_path, capfd, blobs):
    from tfopt.cli import main

    x, y = blobs(160, 0)
    np.savez(tmp_path / "blobs.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    out = tmp_path / "nf"
    code = main(["auto", "--max-accuracy-drop", "0.99", "--data", str(tmp_path / "blobs.npz"),
                 "--epochs", "1", "--max-trials", "1", "--techniques", "prune",
                 "--max-flash", "1B", "--out", str(out)])  # fmt: skip
    captured = capfd.readouterr()
    assert code == 3, captured.out[-2000:] + captured.err[-2000:]
    last = captured.err.strip().splitlines()[-1]
    assert last == (
        "tfopt: no candidate within the budgets (accuracy -99.00 pt, flash <= 1 B): of 1 "
        "candidate(s) rejected: accuracy 0, flash 1 (one candidate can miss several); closest, "
        f"outside the budget: {out / 'closest_over_budget.tflite'}"
    )
    report = json.loads((out / "report.json").read_text())
    assert report["best"] is None and report["closest"]["misses"] == ["flash"]
    assert (out / "closest_over_budget.tflite").read_bytes() == (
        out / "search/trial_0/model.tflite"
    ).read_bytes()
    assert not (out / "best.tflite").exists()
    assert "**outside the budget** (flash)" in (out / "report.md").read_text()


def test_sensitivity_pass_and_the_per_layer_recipes_it_gives(trained):
    import tfopt
    from tfopt.auto._sensitivity import _int4, layer_plan, layer_sensitivity, plans
    from tfopt.tune import recipe_steps
    from tfopt.tune._space import clone

    model, _, val, _ = trained
    weights = [w.copy() for w in model.get_weights()]
    sens = layer_sensitivity(model, val)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))  # restored
    hidden = [ly.name for ly in model.layers if getattr(ly, "kernel", None) is not None][:-1]
    assert list(sens["layers"]) == hidden and sens["samples"] == 96  # the output layer is left out
    assert sum(s["share"] for s in sens["layers"].values()) == pytest.approx(1.0)
    # one loss, recomputed independently: the first layer's kernel in 4 bits
    name = hidden[0]
    copy = clone(model)
    copy.get_layer(name).kernel.assign(_int4(np.asarray(copy.get_layer(name).kernel)))
    lost = tfopt.bench.evaluate(model, val) - tfopt.bench.evaluate(copy, val)
    assert sens["layers"][name]["int4"] == pytest.approx(max(0.0, lost), abs=1e-9)

    fake = {"layers": {
        "c1": {"share": 0.02, "channels": {"0.25": 0.01, "0.5": 0.2, "0.75": 0.5}, "sparsity": 0.0,
               "int4": 0.0},
        "c2": {"share": 0.3, "channels": {"0.25": 0.0, "0.5": 0.02, "0.75": 0.04}, "sparsity": 0.02,
               "int4": 0.05},
        "fc": {"share": 0.68, "channels": {"0.25": 0.0, "0.5": 0.0, "0.75": 0.09}, "sparsity": 0.0,
               "int4": 0.01}}}  # fmt: skip
    assert layer_plan(fake, 0.03) == {"channels": {"c1": 0.25, "c2": 0.5, "fc": 0.5},
                                      "prune": ["c2", "fc"], "bits4": ["c1", "fc"]}  # fmt: skip
    assert list(plans(fake, (0.03, 0.1, 0.12))) == ["plan@0.03", "plan@0.1"]  # 0.12 repeats
    plan = layer_plan(fake, 0.1)
    steps = recipe_steps({"channel_ratio": 0.5, "channel_scope": "plan@0.1", "channel_plan":
                          plan["channels"], "sparsity": 0.8, "prune_scope": "plan@0.1",
                          "prune_layers": plan["prune"], "quantization": "qat", "weight_bits":
                          "plan@0.1", "bits4_layers": plan["bits4"], "epochs": 4})  # fmt: skip
    assert [(s.type, s.ratio if s.type == "prune_channels" else None) for s in steps] == [
        ("prune_channels", 0.75),
        ("prune_channels", 0.25),
        ("prune", None),
        ("qat", None),
    ]
    assert steps[0].filters == ["^c2$", "^fc$"] and steps[1].filters == ["^c1$"]
    assert steps[2].filters == ["^c2$", "^fc$"] and steps[2].target_sparsity == 0.8
    assert steps[3].bits == {"^c1$": 4, "^c2$": 4, "^fc$": 4}


def test_screening_fine_tunes_on_a_subset_and_refinement_on_everything(
    trained, tmp_path, monkeypatch, progress
):
    import tfopt
    import tfopt.auto._search as search_mod
    import tfopt.tune._tuner as tuner_mod
    from tfopt.auto._search import screening_subset

    model, train, val, _ = trained
    x, y = screening_subset(train, 0, limit=100)
    keep = np.sort(np.random.default_rng(0).choice(320, 100, replace=False))
    assert np.array_equal(x, train[0][keep]) and np.array_equal(y, train[1][keep])
    assert screening_subset(train, 0, limit=320) is train

    seen = []
    real = tuner_mod.run_candidate

    def spy(model, steps, *, train, **kw):
        seen.append(len(train[0]))
        return real(model, steps, train=train, **kw)

    monkeypatch.setattr(tuner_mod, "run_candidate", spy)
    monkeypatch.setattr(search_mod, "SCREEN_SAMPLES", 100)
    lines = progress
    res = tfopt.auto.optimize(
        model, train, val, max_accuracy_drop=0.5, max_trials=1, refine=1, techniques=("prune",),
        space={"ft_epochs": 1}, seeds=[{"sparsity": 0.5}], out_dir=tmp_path / "s",
    )  # fmt: skip
    assert [c["trial_id"] for c in res.candidates] == ["0", "r000"]
    assert seen == [100, 320]  # the screen on the subset, the refinement on everything
    assert "[auto] screening fine-tunes on 100 of the 320 training samples; refinement on all" in (
        "\n".join(lines)
    )
    report = json.loads((tmp_path / "s/report.json").read_text())
    assert report["screening"] == {"train_samples": 100, "of": 320, "refine_epochs_factor": 3}


def test_no_trial_cuts_a_hidden_dense_layer_the_model_does_not_have():
    """A conv net with only its output Dense: the scopes that cut the widest hidden Dense layer
    ("dense", "all_dense") are neither searched nor seeded (a user's residual CNN lost trial 05
    to "scope='widest_dense' needs a hidden Dense layer")."""
    import keras_tuner

    from tfopt.auto import Budget
    from tfopt.auto._search import default_seeds
    from tfopt.tune import CompressionHyperModel

    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    conv_only = keras.Model(inputs, keras.layers.Dense(3)(x))
    hypermodel = CompressionHyperModel(model=conv_only)
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    assert hp._hps["channel_scope"][0].values == ["all"]
    for budget in (None, Budget(0.01, max_flash=1000)):
        scopes = {s.get("channel_scope") for s in default_seeds(hypermodel, budget)}
        assert scopes <= {None, "all"}, scopes
    inputs = keras.Input((6,))
    hidden = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(inputs)))
    hp = keras_tuner.HyperParameters()
    CompressionHyperModel(model=hidden).declare(hp)
    assert hp._hps["channel_scope"][0].values == ["dense", "all", "all_dense"]


@pytest.mark.parametrize("first", ["0", "00", "000"])
def test_the_safe_qat_seed_is_dropped_whatever_the_trial_id_width(first):
    """KerasTuner pads trial ids to the width of max_trials: with a time budget (max_trials
    1000) trial 0 is "000", and the QAT seed of the unchanged model ran although PTQ had fit
    (a Fashion-MNIST search spent 72 s on it)."""
    from types import SimpleNamespace

    from tfopt.auto._search import SAFE_FIRST, Search

    seeds = [dict(SAFE_FIRST[0]), dict(SAFE_FIRST[1]), {"sparsity": 0.8}]
    search = SimpleNamespace(safe_first=True, seeds=list(seeds),
                             oracle=SimpleNamespace(trials={}, seeds=list(seeds)))  # fmt: skip
    fits = SimpleNamespace(trial_id=first, completed=True, within_budget=True, rejected=[])
    Search._skip_safe_qat(search, fits)
    assert search.oracle.seeds == [seeds[0], seeds[2]] and not search.safe_first
