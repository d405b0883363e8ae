"""QAT on real CNN families: float vs PTQ int8 vs tfopt QAT int8 vs tfmot QAT int8, and step time.

For each model (MobileNetV2 and MobileNetV3Small at alpha 0.35 from keras.applications, and
tfopt.models' efficientnet_32, resnet_v2_32 and densenet_32) and each dataset (digits32,
shapes32): train in float, then measure through the TFLite interpreter the float model, PTQ int8
(`tfopt.export.tflite(..., quantization="int8", representative_data=...)`), tfopt QAT int8 and,
when tfmot accepts the architecture, tfmot's default 8-bit QAT int8 (same weights, data and
fine-tuning recipe, in its own tf_keras process: benchmarks/_tfmot_real.py). Agreement is the
argmax agreement of the int8 file with its Keras QAT model. Latency: median single-sample int8
invoke, one thread.

Step time: one training step of MobileNetV2(alpha 0.35, 96x96, batch 32) in float Keras 3,
through tfopt.quantize.qat, and through tfmot (its process kept alive and asked for steps between
ours), interleaved in rounds.

Usage: python benchmarks/qat_real_models.py [--quick] [--models a,b] [--datasets digits32]
           [--step-only] [--render]
Writes benchmarks/results/qat_real_models.{json,md} after every row (an interrupted run keeps
its rows); --step-only re-measures the step times into the saved result.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt._stats import PairedDelta, correct, paired_delta
from tfopt.bench._runners import TFLiteRunner

keras = import_keras()
HERE = Path(__file__).parent
TFMOT = [sys.executable, str(HERE / "_tfmot_real.py")]


def settle_batchnorm(model, momentum=0.9):
    """keras.applications' BatchNorm momentum (0.999) leaves the inference statistics unsettled
    after a few epochs on ~1,300 images (accuracy stays at chance): use tfopt's builders' 0.9."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model


def build(name):
    if name == "mobilenet_v2":
        return settle_batchnorm(
            keras.applications.MobileNetV2(
                input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
            )
        )
    if name == "mobilenet_v3_small":
        return settle_batchnorm(
            keras.applications.MobileNetV3Small(
                input_shape=(32, 32, 3),
                alpha=0.35,
                weights=None,
                classes=10,
                include_preprocessing=False,
            )
        )
    return tfopt.models.get(name)


def fit(model, x, y, epochs, lr, batch):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    return model


def tflite_predict(path, x):
    return TFLiteRunner(path).predict(x)


def latency_us(path, sample, n=100):
    runner = TFLiteRunner(path, num_threads=1)
    for _ in range(10):
        runner.invoke(sample)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        runner.invoke(sample)
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def tfmot_qat(name, model, data, args, tmp, seed):
    src, dst, meta = tmp / f"{name}.npz", tmp / f"{name}_tfmot.tflite", tmp / f"{name}.json"
    weights = model.get_weights()
    np.savez(
        src,
        x_train=data.x_train,
        y_train=data.y_train,
        model=name,
        n_weights=len(weights),
        epochs=args.qat_epochs,
        batch_size=args.batch,
        learning_rate=args.qat_lr,
        seed=seed,
        **{f"w{i}": w for i, w in enumerate(weights)},
    )
    proc = subprocess.run(
        [*TFMOT, "qat", str(src), str(dst), str(meta)], capture_output=True, text=True
    )
    if proc.returncode != 0 or not meta.exists():
        return None, f"tfmot process failed: {proc.stderr.strip().splitlines()[-1][:200]}"
    out = json.loads(meta.read_text())
    return (None, out["error"]) if "error" in out else (dst, None)


def one(name, data, args, tmp):
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    keras.utils.set_random_seed(0)
    model = fit(build(name), x, y, args.epochs, args.lr, args.batch)
    row = {"model": name, "dataset": data.name, "params": model.count_params()}
    float_right = correct(model.predict(xt, verbose=0), yt)
    row["float"] = float(float_right.mean())
    ptq = tfopt.export.tflite(
        model,
        tmp / f"{name}_ptq.tflite",
        quantization="int8",
        representative_data=x[:200],
        check_data=xt[:50],
        min_agreement=0.0,
    )
    row["ptq"] = float(np.mean(tflite_predict(ptq.path, xt).argmax(1) == yt))
    # like with like: the float model fine-tuned with QAT's recipe (epochs, learning rate), so a
    # QAT gain is not only the extra training; each fine-tune (float, tfopt QAT, tfmot QAT) starts
    # from the same float weights, once per seed (the seed sets shuffling and initial state)
    runs = [
        fine_tune(name, model, data, args, tmp, seed, float_right) for seed in range(args.seeds)
    ]
    row["paired"] = [r.pop("paired") for r in runs]  # per seed, on the same test samples
    row["seeds"] = {k: [r[k] for r in runs] for k in runs[0] if k in PER_SEED}
    for k, values in row["seeds"].items():
        known = [v for v in values if v is not None]
        row[k] = (min if k == "agreement" else statistics.mean)(known) if known else None
    row.update({k: v for k, v in runs[0].items() if k not in PER_SEED})
    return row


PER_SEED = ("float_ft", "qat", "agreement", "tfmot")
RECIPE = ("quick", "epochs", "qat_epochs", "lr", "qat_lr", "batch", "tfmot")


def fine_tune(name, model, data, args, tmp, seed, float_right):
    """Float fine-tune, tfopt QAT and tfmot QAT of the trained ``model`` with one seed; ``paired``
    holds QAT's paired deltas (tfopt._stats) vs the float model, its fine-tune and tfmot's QAT."""
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    r = {}
    keras.utils.set_random_seed(seed)
    control = keras.models.clone_model(model)
    control.set_weights(model.get_weights())
    fit(control, x, y, args.qat_epochs, args.qat_lr, args.batch)
    ft_right = correct(control.predict(xt, verbose=0), yt)
    r["float_ft"] = float(ft_right.mean())
    keras.utils.set_random_seed(seed)
    q = tfopt.quantize.qat(model)
    fit(q, x, y, args.qat_epochs, args.qat_lr, args.batch)
    art = tfopt.export.tflite(
        q, tmp / f"{name}_qat.tflite", quantization="int8", check_data=xt[:50], min_agreement=0.0
    )
    pred = tflite_predict(art.path, xt).argmax(1)
    qat_right = correct(pred, yt)
    r["qat"] = float(qat_right.mean())
    r["paired"] = {
        "qat_vs_float": paired_delta(float_right, qat_right).to_dict(),
        "qat_vs_float_ft": paired_delta(ft_right, qat_right).to_dict(),
    }
    r["agreement"] = float(np.mean(pred == q.predict(xt, verbose=0).argmax(1)))
    r["left_float"] = q.tfopt_report.skipped
    r["latency_us"] = latency_us(art.path, xt[:1])
    if args.tfmot:
        path, err = tfmot_qat(name, model, data, args, tmp, seed)
        r["tfmot"] = None
        if path:
            tfmot_right = correct(tflite_predict(path, xt), yt)
            r["tfmot"] = float(tfmot_right.mean())
            r["paired"]["qat_vs_tfmot"] = paired_delta(tfmot_right, qat_right).to_dict()
        r["tfmot_note"] = err
    return r


def step_times(rounds, steps):
    """Per-step ms of float, tfopt QAT and tfmot QAT on MobileNetV2(0.35, 96x96, batch 32)."""
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10
    )
    q = tfopt.quantize.qat(m)
    x = np.random.default_rng(0).random((32, 96, 96, 3), dtype="float32")
    y = np.arange(32) % 10
    ours = {"float": m, "tfopt_qat": q}
    for model in ours.values():
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
    child = subprocess.Popen(
        [*TFMOT, "step"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    ready = child.stdout.readline().strip() == "ready"
    times = {"float": [], "tfopt_qat": [], "tfmot_qat": []}
    for _ in range(rounds):
        for key, model in ours.items():
            for _ in range(steps):
                t = time.perf_counter()
                model.train_on_batch(x, y)
                times[key].append(1000 * (time.perf_counter() - t))
        if ready:
            child.stdin.write(f"{steps}\n")
            child.stdin.flush()
            times["tfmot_qat"] += json.loads(child.stdout.readline())
    child.stdin.close()
    child.wait()
    return times


def paired_section(rows) -> str:
    """tfopt QAT vs float, vs the fine-tuned float and vs tfmot, paired per seed (tfopt._stats)."""
    lines = []
    for r in rows:
        if not r.get("paired"):
            continue  # measured before the paired deltas were recorded
        parts = []
        for key, what in (
            ("qat_vs_float", "vs float"),
            ("qat_vs_float_ft", "vs float + QAT's epochs"),
            ("qat_vs_tfmot", "vs tfmot QAT"),
        ):
            each = [PairedDelta(**p[key]).as_points() for p in r["paired"] if key in p]
            if each:
                parts.append(f"{what} {'; '.join(each)}")
        lines.append(f"- {r['dataset']}/{r['model']}: QAT {'. '.join(parts)}")
    if not lines:
        return ""
    return (
        "\ntfopt QAT int8, paired on the same test samples (tfopt._stats.paired_delta, 95% "
        "paired bootstrap interval), one entry per seed:\n" + "\n".join(lines) + "\n"
    )


def render(result) -> str:
    rows, steps, args = result["rows"], result.get("step_ms"), result["args"]

    def pts(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = [
        "| dataset | model | params | float | float + QAT's epochs | PTQ int8 | tfopt QAT int8 "
        "| QAT - float (pt) | agreement | tfmot QAT int8 | int8 latency (µs) | left float "
        "| seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tfm = (
            pts(r.get("tfmot"))
            if r.get("tfmot") is not None
            else (f"refused: {r['tfmot_note']}" if r.get("tfmot_note") else "not run")
        )
        ref = max(r["float"], r["float_ft"])
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['params']:,} | {pts(r['float'])} "
            f"| {pts(r['float_ft'])} | {pts(r['ptq'])} | {pts(r['qat'])} "
            f"| {100 * (r['qat'] - ref):+.1f} | {r['agreement']:.3f} | {tfm} "
            f"| {r['latency_us']:.0f} | {', '.join(r['left_float']) or '-'} "
            f"| {len(r.get('seeds', {}).get('qat', [1]))} |"
        )
    runs = "; ".join(
        f"{len(r['rows'])} row{'s' * (len(r['rows']) != 1)} with {r['seeds']} fine-tune seed{'s' * (r['seeds'] > 1)} in "
        f"{r['seconds']:.0f} s at load average {r['load']:.1f}"
        for r in result["runs"]
    )
    spread = [
        f"{r['dataset']}/{r['model']}: "
        + "; ".join(
            f"{k} {' '.join(pts(v) for v in r['seeds'][k])}"
            for k in PER_SEED
            if k != "agreement" and any(v is not None for v in r["seeds"][k])
        )
        for r in rows
        if len(r.get("seeds", {}).get("qat", [])) > 1
    ]
    text = (
        f"QAT on trained CNN families at 32x32 ({'quick: ' if args['quick'] else ''}float "
        f"{args['epochs']} epochs Adam {args['lr']}, QAT {args['qat_epochs']} epochs Adam "
        f"{args['qat_lr']}, batch {args['batch']}); accuracy (%) through the TFLite interpreter "
        "on the test split, except the two float columns (Keras). QAT - float compares with the "
        "better of the float model and the float model fine-tuned for QAT's epochs at QAT's "
        "learning rate. The fine-tuned columns (float + QAT's epochs, tfopt QAT, tfmot QAT) are "
        "means over the row's fine-tune seeds, all from the same float model; agreement is the "
        f"lowest. Runs: {runs}, on {os.cpu_count()} cores; latency is the median single-sample "
        "int8 invoke on one thread, under that load.\n\n"
        + "\n".join(lines)
        + "\n"
        + ("\nPer seed (%): " + ". ".join(spread) + ".\n" if spread else "")
        + paired_section(rows)
    )
    if steps:
        med = {k: statistics.median(v) if v else float("nan") for k, v in steps.items()}
        text += (
            f"\nTraining step, MobileNetV2(alpha 0.35, 96x96, batch 32), median of "
            f"{len(steps['float'])} steps in {args['step_rounds']} interleaved rounds (load "
            f"average {result['step_load']:.1f}): float {med['float']:.0f} ms, tfopt QAT "
            f"{med['tfopt_qat']:.0f} ms ({med['tfopt_qat'] / med['float']:.2f}x float), tfmot QAT "
            f"{med['tfmot_qat']:.0f} ms (tfopt / tfmot {med['tfopt_qat'] / med['tfmot_qat']:.2f}x)."
            "\n"
        )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits32 only, fewer epochs")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--qat-lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-tfmot", dest="tfmot", action="store_false")
    parser.add_argument("--models", default="", help="comma-separated (default: all five)")
    parser.add_argument("--datasets", default="digits32,shapes32")
    parser.add_argument(
        "--seeds", type=int, default=1, help="fine-tunes per row (float, QAT, tfmot), averaged"
    )
    parser.add_argument("--step-rounds", type=int, default=5)
    parser.add_argument(
        "--step-only", action="store_true", help="measure step times, keep the saved rows"
    )
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    json_path, md_path = out / "qat_real_models.json", out / "qat_real_models.md"

    def save(result):  # after every row: an interrupted run keeps what it measured
        json_path.write_text(json.dumps(result, indent=2, default=str))
        md_path.write_text(render(result))

    if args.render:
        save(json.loads(json_path.read_text()))
        print(md_path.read_text())
        return 0
    if args.quick:
        args.epochs, args.qat_epochs, args.step_rounds = min(args.epochs, 6), 1, 3
        args.datasets = "digits32"
    names = (
        args.models or "mobilenet_v2,mobilenet_v3_small,efficientnet_32,resnet_v2_32,densenet_32"
    ).split(",")
    if args.step_only:
        result = json.loads(json_path.read_text())
    else:
        result = {"rows": [], "args": vars(args), "runs": []}
        saved = json.loads(json_path.read_text()) if json_path.exists() else None
        if saved and all(saved["args"][k] == getattr(args, k) for k in RECIPE):
            result = saved  # same recipe: the rows run now replace theirs, the others stay
        run = {"rows": [], "seeds": args.seeds, "seconds": 0.0, "load": 0.0}
        result["runs"].append(run)
        started, loads = time.time(), []
        with tempfile.TemporaryDirectory() as tmp:
            for ds_name in args.datasets.split(","):
                data = tfopt.data.load(ds_name)
                for name in names:
                    row = one(name, data, args, Path(tmp))
                    keys = [(r["model"], r["dataset"]) for r in result["rows"]]
                    if (name, ds_name) in keys:
                        result["rows"][keys.index((name, ds_name))] = row
                    else:
                        result["rows"].append(row)
                    loads.append(os.getloadavg()[0])
                    run["rows"].append(f"{ds_name}/{name}")
                    run["seconds"] = time.time() - started
                    run["load"] = statistics.mean(loads)
                    save(result)
                    print(json.dumps(row), flush=True)
    result["step_ms"] = step_times(args.step_rounds, 5)
    result["step_load"] = os.getloadavg()[0]
    result["args"]["step_rounds"] = args.step_rounds
    save(result)
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
