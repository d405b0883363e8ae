"""Fashion-MNIST: tfopt vs tfmot on the same trained Fashion model, laid out like tfmot's tables.

Usage: python benchmarks/fashion_vs_tfmot.py [--rows prune-75,qat-int8,...,timing] [--seeds 3]
           [--ft-epochs 1] [--model fashion_cnn] [--baseline-epochs N] [--quick] [--render]

One float `fashion_cnn` (or `--model fashion_mobilenet`, the mobile-class net;
benchmarks/_fashion.py: the `fashion` config's model and trainer, trained once and cached;
`--baseline-epochs` shortens its epochs) is the start of every row on both sides. A control row fine-tunes the float model itself with the same recipe. tfmot 0.8.1 runs
in its own tf_keras process (benchmarks/_tfmot_fashion.py) that receives the same weights and
training images as .npz and answers each row with a .tflite file.
Rows, as tfmot's published tables have them:

- magnitude pruning to 50 / 75 / 87.5% (PolynomialDecay from 0, power 3, reaching the target
  halfway through the fine-tune, ~20 mask updates; the same schedule on both sides) and 2:4
  (ConstantSparsity(0.5) with m_by_n=(2, 4) / sparsity_m_by_n=(2, 4)); float32 TFLite;
- PTQ int8 (full integer, 200 training images as representative data: tfopt.export.tflite /
  TFLiteConverter on the tf_keras copy) and QAT int8 (tfopt.quantize.qat / quantize_model);
- clustering with 16 and 32 clusters per layer, k-means++ init (tfopt.cluster.cluster /
  cluster_weights); float32 TFLite;
- pruning-preserving QAT (the 50% row's pruned model; tfopt.quantize.qat keeps its zeros /
  tfmot's Default8BitPrunePreserveQuantizeScheme) and cluster-preserving QAT (the 16-cluster
  row's model; tfopt.quantize.qat(preserve_clusters=True) trains the 16 centroids of each kernel
  / tfmot's Default8BitClusterPreserveQuantizeScheme).

Every fine-tune: Adam (prune 5e-4, the others 1e-4), batch 128, `--ft-epochs` epochs of the
54,000 training images (a fraction is a seeded random subset, the same on both sides), from the
same float weights. Accuracy is measured through the TFLite file with LiteRT on the 10,000 test
images; each delta is paired (tfopt._stats.paired_delta: 95% paired bootstrap interval, McNemar's
p). The prune-75, qat-int8 and cluster-16 rows run `--seeds` fine-tune seeds. Train-step time:
one-epoch fits of `--timing-steps` steps of each technique's model, interleaved with an unwrapped
float copy in the same process (each side in its own), `--timing-rounds` rounds after a warm-up.

Each row is saved to benchmarks/results/fashion_vs_tfmot.{json,md} as soon as it is measured;
`--rows` re-measures only those rows (and `timing`), keeping the others when the baseline and
the recipe are the same.
"""

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt._stats import accuracy_interval, paired_delta
from tfopt.bench import file_sizes
from tfopt.bench._ops import tflite_kernels
from tfopt.bench._runners import TFLiteRunner
from tfopt.config._steps import PruneStepConfig
from tfopt.prune import _step as prune_step

keras = import_keras()
HERE = Path(__file__).parent
OUT = HERE / "results"
MULTI_SEED = ("prune-75", "qat-int8", "cluster-16")
BN_IMAGES = 6400  # the fine-tune images strip(batchnorm_data=...) recomputes BatchNorm on
LEARNING_RATE = {"prune": 5e-4, "qat": 1e-4, "cluster": 1e-4, "pqat": 1e-4, "cqat": 1e-4}
LEARNING_RATE["float"] = 1e-4
TIMED = ("prune-75", "prune-2:4", "qat-int8", "cluster-16", "pqat-int8", "cqat-int8")


def row_specs() -> dict[str, dict]:
    """The rows in table order: what each side runs (the dict is sent to tfmot's process)."""
    rows = {"ptq-int8": {"kind": "ptq", "label": "PTQ int8 (full integer)"}}
    for s in (0.5, 0.75, 0.875):
        rows[f"prune-{100 * s:g}"] = {"kind": "prune", "sparsity": s, "label": f"prune {s:.1%}"}
    rows["prune-2:4"] = {"kind": "prune", "sparsity": 0.5, "m_by_n": [2, 4], "label": "prune 2:4"}
    rows["qat-int8"] = {"kind": "qat", "label": "QAT int8"}
    for n in (16, 32):
        rows[f"cluster-{n}"] = {"kind": "cluster", "clusters": n, "label": f"cluster {n}"}
    rows["pqat-int8"] = {"kind": "pqat", "base": "prune-50", "label": "prune 50% + PQAT int8"}
    rows["cqat-int8"] = {"kind": "cqat", "base": "cluster-16", "label": "cluster 16 + CQAT int8"}
    rows["float-ft"] = {"kind": "float", "label": "float + the same fine-tune (control)"}
    for name, row in rows.items():
        row["name"] = name
    return rows


def fine_tune_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """The training indices of one fine-tune (tfmot's process uses the same rule)."""
    if fraction >= 1.0:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))])


def recipe(row: dict, n_train: int, args) -> dict:
    """Adds the fine-tune settings and the pruning schedule (its steps) to a row."""
    row = dict(row)
    epochs = max(1, math.floor(args.ft_epochs))
    fraction = min(1.0, args.ft_epochs)
    images = len(fine_tune_subset(n_train, fraction, 0))
    row["fine_tune"] = {
        "epochs": epochs,
        "fraction": fraction,
        "images": images,
        "batch_size": args.batch,
        "learning_rate": LEARNING_RATE.get(row["kind"], 0.0),
    }
    steps = epochs * math.ceil(images / args.batch)
    cfg = PruneStepConfig(target_sparsity=row.get("sparsity", 0.5), epochs=epochs)
    schedule = prune_step.make_schedule(cfg, steps)
    row["schedule"] = {
        "begin_step": schedule.begin_step,
        "end_step": schedule.end_step,
        "power": schedule.power,
        "frequency": schedule.frequency,
    }
    if "base" in row:
        row["base"] = recipe(row_specs()[row["base"]], n_train, args)
    return row


def schedule_of(row):
    s = row["schedule"]
    if row.get("m_by_n"):
        return tfopt.prune.ConstantSparsity(0.5, begin_step=0, frequency=s["frequency"])
    return tfopt.prune.PolynomialDecay(
        0.0, row["sparsity"], s["begin_step"], s["end_step"], s["power"], s["frequency"]
    )


def compile_model(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


class TfoptSide:
    """tfopt's rows, from the float model ``base`` (never changed)."""

    def __init__(self, base, data, tmp: Path):
        self.base, self.data, self.tmp = base, data, tmp
        self.cache: dict = {}  # (row name, seed) -> stripped model, for PQAT / CQAT
        self.refreshed = None  # the last prune row's model after strip(batchnorm_data=...)

    def wrapped(self, row, seed):
        """The row's model before fine-tuning (seed None: the step-time model)."""
        kind = row["kind"]
        if kind == "prune":
            extra = {"m_by_n": tuple(row["m_by_n"])} if row.get("m_by_n") else {}
            return tfopt.prune.prune(self.base, schedule_of(row), **extra)
        if kind == "cluster":
            return tfopt.cluster.cluster(self.base, row["clusters"], seed=seed or 0)
        if kind == "qat":
            return tfopt.quantize.qat(self.base)
        if kind == "float":  # the control: the float model fine-tuned with the same recipe
            model = keras.models.clone_model(self.base)
            model.set_weights(self.base.get_weights())
            return model
        if kind in ("pqat", "cqat"):  # QAT that keeps the zeros / the clusters of its base row
            base = self.timing_base(row) if seed is None else self.prerequisite(row["base"], seed)
            return tfopt.quantize.qat(
                base, preserve_sparsity=True, preserve_clusters=kind == "cqat"
            )
        raise ValueError(f"unknown row kind {kind!r}")

    def timing_base(self, row):
        model = keras.models.clone_model(self.base)
        model.set_weights([synthetic_base(w, row["kind"]) for w in self.base.get_weights()])
        return model

    def prerequisite(self, row, seed):
        key = (row["name"], seed)
        if key not in self.cache:
            self.cache[key] = self.fine_tuned(row, seed)
        return self.cache[key]

    def fine_tuned(self, row, seed):
        keras.utils.set_random_seed(seed)
        model = self.wrapped(row, seed)
        f = row["fine_tune"]
        idx = fine_tune_subset(len(self.data.x_train), f["fraction"], seed)
        compile_model(model, f["learning_rate"])
        model.fit(
            self.data.x_train[idx],
            self.data.y_train[idx],
            batch_size=f["batch_size"],
            epochs=f["epochs"],
            verbose=0,
        )
        if row["kind"] == "prune":  # also with its BatchNorm statistics recomputed
            self.refreshed = tfopt.prune.strip(
                model, batchnorm_data=self.data.x_train[idx[:BN_IMAGES]]
            )
            return tfopt.prune.strip(model)
        if row["kind"] == "cluster":
            return tfopt.cluster.strip(model)
        return model

    def run_row(self, row, seed, out: Path) -> dict:
        started = time.perf_counter()
        x = self.data.x_train
        if row["kind"] == "ptq":
            model = self.base
            tfopt.export.tflite(
                model,
                out,
                quantization="int8",
                representative_data=x[:200],
                check_data=x[:50],
                min_agreement=0.0,
            )
        else:
            model = self.fine_tuned(row, seed)
            if row["kind"] in ("prune", "cluster"):
                self.cache[(row["name"], seed)] = model
            quantization = "float32" if row["kind"] in ("prune", "cluster", "float") else "int8"
            tfopt.export.tflite(
                model, out, quantization=quantization, check_data=x[:50], min_agreement=0.0
            )
        answer = {"sparsity": kernel_sparsity(model), "seconds": time.perf_counter() - started}
        if row["kind"] == "prune" and self.refreshed is not None:
            path = out.with_name(f"{out.stem}_bn.tflite")
            tfopt.export.tflite(self.refreshed, path, check_data=x[:50], min_agreement=0.0)
            answer["bn_refresh_path"], self.refreshed = str(path), None
        return answer

    def time_steps(self, spec) -> dict:
        n = spec["steps"] * spec["batch_size"]
        x, y = self.data.x_train[:n], self.data.y_train[:n]
        dense = keras.models.clone_model(self.base)
        dense.set_weights(self.base.get_weights())
        models = {"float": dense}
        for row in spec["rows"]:
            models[row["name"]] = self.wrapped(row, None)
        for model in models.values():
            compile_model(model, 1e-4)
        return {"seconds": interleaved_fits(models, x, y, spec)}


def interleaved_fits(models: dict, x, y, spec) -> dict:
    """Per-round seconds of a one-epoch fit of each model; the order rotates each round."""
    seconds = {k: [] for k in models}
    keys = list(models)
    for r in range(spec["rounds"] + 1):  # round 0 warms up (tracing)
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = time.perf_counter()
            models[k].fit(x, y, batch_size=spec["batch_size"], epochs=1, verbose=0)
            if r:
                seconds[k].append(time.perf_counter() - t)
    return seconds


def synthetic_base(w, kind):
    """Kernels with half their weights zeroed (pqat) or snapped to 16 levels (cqat): shaped like
    PQAT's / CQAT's input without fine-tuning one (step time only; same as tfmot's process)."""
    if w.ndim < 2:
        return w
    if kind == "pqat":
        return np.where(np.abs(w) >= np.median(np.abs(w)), w, 0.0).astype(w.dtype)
    levels = np.linspace(w.min(), w.max(), 16)
    return levels[np.abs(w[..., None] - levels).argmin(-1)].astype(w.dtype)


def kernel_sparsity(model) -> float:
    kernels = [
        np.asarray(v.numpy()) for v in model.weights if v.path.endswith("kernel") and v.ndim > 1
    ]
    return float(sum(int((k == 0).sum()) for k in kernels) / max(1, sum(k.size for k in kernels)))


class TfmotSide:
    """The tfmot process: one request per row, answered with a .tflite file."""

    def __init__(self, base, data, model_source: Path, model_options: dict, tmp: Path):
        npz = tmp / "tfmot_in.npz"
        weights = base.get_weights()
        np.savez(
            npz,
            x_train=data.x_train,
            y_train=data.y_train,
            representative=data.x_train[:200],
            model_source=str(model_source),
            model_name=base.name,
            model_options=json.dumps(model_options),
            n_weights=len(weights),
            **{f"w{i}": w for i, w in enumerate(weights)},
        )
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_tfmot_fashion.py"), str(npz)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.versions = self._read()
        if not self.versions.get("ready"):
            raise SystemExit(f"tfmot process did not start: {self.versions}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"tfmot process ended (exit code {self.proc.wait()}); see stderr")
        return json.loads(line)

    def send(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def ask(self, request: dict) -> dict:
        self.send(request)
        return self._read()

    def start_row(self, row, seed, out: Path) -> None:
        """Starts a row; `_read` gets its answer (tfopt's side runs meanwhile)."""
        self.send({"row": row, "seed": seed, "out": str(out)})

    def time_steps(self, spec) -> dict:
        return self.ask({"time": spec})

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(path: Path, data) -> dict:
    """Accuracy through LiteRT on the whole test set; the wrong samples kept for paired deltas."""
    outputs = TFLiteRunner(path, num_threads=2).predict(data.x_test)
    right = tfopt._stats.correct(outputs, data.y_test)
    return {
        "accuracy": float(right.mean()),
        "wrong": np.flatnonzero(~right).tolist(),
        **file_sizes(path),
    }


def kernel_values(path: Path) -> int:
    """The most distinct int8 values in one output channel of any conv / FC kernel of a .tflite
    file (cluster-preserving QAT of 16 clusters: <= 16)."""
    rows = [row for _, kernel in tflite_kernels(path) for row in kernel]
    return max((len(np.unique(row)) for row in rows), default=0)


def correct_of(result: dict, n: int) -> np.ndarray:
    right = np.ones(n, bool)
    right[result["wrong"]] = False
    return right


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def summarize(result: dict, n_test: int) -> dict:
    """Per row and side: accuracies per seed, paired deltas vs float, and tfopt - tfmot."""
    float_right = correct_of(result["float"], n_test)
    out = {}
    for name, sides in result["rows"].items():
        row = {}
        for side, seeds in sides.items():
            ok = {s: r for s, r in seeds.items() if "wrong" in r}
            if not ok:
                row[side] = {"error": next(iter(seeds.values()), {}).get("error", "not run")}
                continue
            deltas = {s: paired_delta(float_right, correct_of(r, n_test)) for s, r in ok.items()}
            first = ok[min(ok, key=int)]
            row[side] = {
                "accuracies": {s: r["accuracy"] for s, r in ok.items()},
                "accuracy": statistics.mean(r["accuracy"] for r in ok.values()),
                "deltas": {s: d.to_dict() for s, d in deltas.items()},
                "delta_points": {s: d.as_points() for s, d in deltas.items()},
                "delta": statistics.mean(d.delta for d in deltas.values()),
                "gzip_bytes": first["gzip_bytes"],
                "bytes": first["bytes"],
                "sparsity": first.get("sparsity"),
            }
        if "wrong" in sides.get("tfopt", {}).get("1", {}) and "wrong" in sides.get("tfmot", {}).get(
            "1", {}
        ):
            d = paired_delta(
                correct_of(sides["tfmot"]["1"], n_test), correct_of(sides["tfopt"]["1"], n_test)
            )
            row["tfopt_minus_tfmot_seed1"] = {**d.to_dict(), "points": d.as_points()}
        out[name] = row
    return out


def step_overheads(timing: dict) -> dict:
    """technique -> (ratio of the fastest epochs, median paired ratio) vs the same side's float."""
    out = {}
    for side, t in timing.items():
        if "seconds" not in t:
            continue
        s = t["seconds"]
        out[side] = {
            k: {
                "ratio": min(v) / min(s["float"]),
                "paired_median": statistics.median(a / b for a, b in zip(v, s["float"])),
                "ms_per_step": 1000 * min(v) / t["steps"],
            }
            for k, v in s.items()
        }
    return out


def render(result: dict) -> str:
    n = result["n_test"]
    summary = summarize(result, n)
    steps = step_overheads(result.get("timing", {}))
    specs = row_specs()
    fl = accuracy_interval(correct_of(result["float"], n))
    s = result["settings"]
    lines = [
        "| technique | tfopt acc | tfopt Δ vs float [95% CI] | tfopt gzip KB | tfopt step "
        "| tfmot acc | tfmot Δ vs float [95% CI] | tfmot gzip KB | tfmot step "
        "| tfopt − tfmot (seed 1) [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| float32 baseline | {fl.value:.4f} | [{fl.low:.4f}, {fl.high:.4f}] (Wilson) "
        f"| {result['float']['gzip_bytes'] / 1024:.1f} | 1.00x | same model | | | 1.00x | |",
    ]
    for name, spec in specs.items():
        if name not in summary:
            continue
        row, cells = summary[name], []
        for side in ("tfopt", "tfmot"):
            r = row.get(side, {"error": "not run"})
            step = steps.get(side, {}).get(timing_key(name))
            step_cell = f"{step['ratio']:.2f}x" if step else "-"
            if name == "ptq-int8":
                step_cell = "no training"
            if r.get("error") == "not run":
                cells += ["-", "-", "-", step_cell]
                continue
            if "error" in r:
                cells += [f"failed: {r['error']}", "", "", step_cell]
                continue
            k = len(r["accuracies"])
            acc = f"{r['accuracy']:.4f}" + (f" (mean of {k})" if k > 1 else "")
            delta = (
                f"{100 * r['delta']:+.2f} pt (mean; seeds below)"
                if k > 1
                else r["delta_points"][next(iter(r["delta_points"]))]
            )
            cells += [acc, delta, f"{r['gzip_bytes'] / 1024:.1f}", step_cell]
        vs = row.get("tfopt_minus_tfmot_seed1", {}).get("points", "-")
        label = spec["label"] + cqat_note(result, name)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {vs} |")
    return header(result, s) + "\n".join(lines) + "\n" + footer(result, summary, steps)


def cqat_note(result: dict, name: str) -> str:
    """The cqat row's int8 values per kernel channel on each side; a run from before
    `qat(preserve_clusters=)` (no count recorded) ran plain QAT on tfopt's side and says so."""
    if name != "cqat-int8":
        return ""
    answers = {
        side: [a for a in result["rows"].get(name, {}).get(side, {}).values() if "error" not in a]
        for side in SIDES
    }
    if answers["tfopt"] and not any("kernel_values" in a for a in answers["tfopt"]):
        return " (tfopt: plain QAT, clusters not preserved)"
    counts = {
        side: max(a["kernel_values"] for a in found)
        for side, found in answers.items()
        if found and all("kernel_values" in a for a in found)
    }
    if not counts:
        return ""
    return (
        " (int8 values per kernel channel: "
        + ", ".join(f"{side} <= {v}" for side, v in counts.items())
        + ")"
    )


def timing_key(name: str) -> str:
    """The step-time model of a row: one per technique (pruning targets, cluster counts share)."""
    if name in ("prune-2:4", "ptq-int8"):
        return name
    for technique, timed in (("prune", "prune-75"), ("cluster", "cluster-16")):
        if name.startswith(technique):
            return timed
    return name


def header(result, s) -> str:
    b = result["baseline"]
    runs = "; ".join(
        f"{len(r['rows'])} measurements ({r['rows'][0]} ... {r['rows'][-1]}) in "
        f"{r['seconds']:.0f} s at load average {r['load']:.1f}"
        + (f" (`python benchmarks/fashion_vs_tfmot.py{r['command']}`)" if "command" in r else "")
        for r in result["runs"]
        if r["rows"]
    )
    last = result["runs"][-1] if result["runs"] else {}
    command = (  # the runs that predate per-run commands: the last command of the file
        "" if "command" in last else f" `python benchmarks/fashion_vs_tfmot.py{s['command_args']}`"
    )
    return (
        f"Fashion-MNIST ({result['n_train']:,} train / {n_fmt(result['n_test'])} test images, "
        f"28x28), `{b['model']}` ({b['params']:,} parameters), one float model trained "
        f"{b['epochs']} epochs by benchmarks/_fashion.py (the `fashion` config's trainer"
        f"{'; shortened' if s.get('baseline_epochs') else ''}). Both sides start "
        f"from its weights. Fine-tune: {s['ft_epochs']:g} epoch of {s['ft_images']:,} training "
        f"images, batch {s['batch']}, Adam (prune 5e-4, QAT / clustering 1e-4); pruning reaches "
        "its target halfway (PolynomialDecay, power 3, ~20 mask updates; 2:4 ConstantSparsity "
        "with m_by_n). Accuracy through the TFLite file (LiteRT) on all test images; Δ is paired "
        "against the float TFLite model (paired bootstrap 95% interval, tfopt._stats); the last "
        "column is tfopt − tfmot on the same samples (seed 1). gzip: the .tflite file, gzip -9 "
        "(float32 files for pruning and clustering, int8 for PTQ / QAT). Step: train-step time "
        "vs an unwrapped float copy in the same process (tfopt Keras 3, tfmot tf_keras), ratio "
        f"of the fastest of {s['timing_rounds']} interleaved {s['timing_steps']}-step epochs; "
        "the pruning targets (and the cluster counts) share one measurement. "
        f"tfmot {result['versions']['tfmot']}, tf_keras {result['versions']['tf_keras']}. "
        f"Runs: {runs}, {os.cpu_count()} shared cores.{command}\n\n"
    )


def n_fmt(n: int) -> str:
    return f"{n:,}"


def footer(result, summary, steps) -> str:
    lines = []
    for name in row_specs():
        for side in ("tfopt", "tfmot"):
            r = summary.get(name, {}).get(side, {})
            if len(r.get("accuracies", {})) > 1:
                each = "; ".join(
                    f"seed {k}: {r['accuracies'][k]:.4f}, Δ {r['delta_points'][k]}"
                    for k in sorted(r["accuracies"], key=int)
                )
                lines.append(f"- {name} {side}: {each}")
    text = "\nPer seed (same float model, fine-tune seed varies):\n" + "\n".join(lines) + "\n"
    if not lines:
        text = ""
    if steps:
        ms = "; ".join(
            f"{side} float {v['float']['ms_per_step']:.0f} ms, "
            + ", ".join(
                f"{k} {w['ms_per_step']:.0f} ms ({w['ratio']:.2f}x, paired median "
                f"{w['paired_median']:.2f}x)"
                for k, w in v.items()
                if k != "float"
            )
            for side, v in steps.items()
        )
        text += f"\nTrain step (batch {result['settings']['batch']}): {ms}.\n"
    text += bn_refresh_lines(result)
    missing = [k for k in row_specs() if k not in result["rows"]]
    if missing:
        text += f"\nNot measured yet: {', '.join(missing)}.\n"
    return text


def bn_refresh_lines(result) -> str:
    """tfopt's prune rows again after strip(batchnorm_data=...): the same fine-tuned weights."""
    n = result["n_test"]
    float_right = correct_of(result["float"], n)
    lines = []
    for name, sides in result["rows"].items():
        seeds = {s: r["bn_refresh"] for s, r in sides.get("tfopt", {}).items() if "bn_refresh" in r}
        if not seeds:
            continue
        each = "; ".join(
            f"seed {s}: {r['accuracy']:.4f} (without: {sides['tfopt'][s]['accuracy']:.4f}), "
            f"Δ vs float {paired_delta(float_right, correct_of(r, n)).as_points()}"
            for s, r in sorted(seeds.items(), key=lambda kv: int(kv[0]))
        )
        mean = statistics.mean(r["accuracy"] for r in seeds.values())
        tfmot = sides.get("tfmot", {})
        vs = ""
        if "1" in seeds and "wrong" in tfmot.get("1", {}):
            d = paired_delta(correct_of(tfmot["1"], n), correct_of(seeds["1"], n))
            vs = f"; − tfmot (seed 1) {d.as_points()}"
        if len(tfmot) > 1 and all("accuracy" in r for r in tfmot.values()):
            vs += f"; mean − tfmot mean {100 * (mean - statistics.mean(r['accuracy'] for r in tfmot.values())):+.2f} pt"
        lines.append(f"- {name}: mean {mean:.4f}{vs}. {each}")
    if not lines:
        return ""
    return (
        f"\ntfopt with `tfopt.prune.strip(pruned, batchnorm_data=...)` ({BN_IMAGES:,} of the "
        "fine-tune's images; BatchNorm statistics recomputed, forward passes only), from the same "
        "fine-tuned weights as the table's tfopt column:\n" + "\n".join(lines) + "\n"
    )


def load_baseline(args):
    """(float model, data, record): the cached `fashion` baseline, or a small one with --quick."""
    if args.quick:
        from types import SimpleNamespace

        full = tfopt.data.load("fashion_mnist")
        data = SimpleNamespace(
            x_train=full.x_train[:2000],
            y_train=full.y_train[:2000],
            x_test=full.x_test[:1000],
            y_test=full.y_test[:1000],
        )
        keras.utils.set_random_seed(0)
        model = tfopt.models.get(args.model)
        compile_model(model, 3e-3)
        model.fit(data.x_train, data.y_train, batch_size=128, epochs=1, verbose=0)
        return model, data, {"epochs": 1}
    sys.path.insert(0, str(HERE))
    from _fashion import baseline

    overrides = (f"train.epochs={args.baseline_epochs}",) if args.baseline_epochs else ()
    return baseline(args.model, seed=0, overrides=overrides, verbose=2)


def work_items(args) -> list[tuple[str, int]]:
    """(row, seed) in the order they run: every row's first seed, then the other seeds."""
    names = list(row_specs()) if args.rows == "all" else args.rows.split(",")
    unknown = [n for n in names if n not in row_specs() and n != "timing"]
    if unknown:
        raise SystemExit(f"Unrecognized rows {unknown}. Known rows: {list(row_specs())}, timing")
    items = [(n, 1) for n in names if n != "timing"]
    if args.rows == "all" or "timing" in names:  # before the extra seeds: a column of every row
        items.append(("timing", 0))
    seeded = args.seeded_rows.split(",")
    items += [(n, s) for s in range(2, args.seeds + 1) for n in names if n in seeded]
    return items


def time_both(ours, tfmot, n_train, args) -> dict:
    """Train-step seconds of each technique and float, each side in its own process."""
    spec = {
        "steps": args.timing_steps,
        "rounds": args.timing_rounds,
        "batch_size": args.batch,
        "rows": [recipe(row_specs()[k], n_train, args) for k in TIMED],
    }
    try:
        mine = {**ours.time_steps(spec), "steps": args.timing_steps}
    except Exception as e:  # keep the rows measured so far
        traceback.print_exc()
        mine = {"error": f"{type(e).__name__}: {e}"}
    return {"tfopt": mine, "tfmot": {**tfmot.time_steps(spec), "steps": args.timing_steps}}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="all", help="comma-separated rows and/or 'timing'")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of --seeded-rows")
    parser.add_argument(
        "--seeded-rows", default=",".join(MULTI_SEED), help="rows run --seeds times"
    )
    parser.add_argument("--ft-epochs", type=float, default=1.0, help="< 1: a random subset")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--baseline-epochs", type=int, default=None, help="default: the fashion config's epochs"
    )
    parser.add_argument(
        "--model", default="fashion_cnn", help="the zoo model: fashion_cnn or fashion_mobilenet"
    )
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 images, a smoke test")
    parser.add_argument(
        "--stem", default="fashion_vs_tfmot", help="benchmarks/results/STEM.{json,md}"
    )
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.quick:
        args.ft_epochs, args.seeds, args.timing_steps, args.timing_rounds = 0.1, 2, 2, 1
    return args


def main() -> int:
    args = parse_args()
    stem = "fashion_vs_tfmot_quick" if args.quick else args.stem
    json_path, md_path = OUT / f"{stem}.json", OUT / f"{stem}.md"
    if args.render:
        md_path.write_text(render(json.loads(json_path.read_text())))
        print(md_path.read_text())
        return 0
    started, loads = time.time(), []
    base, data, record = load_baseline(args)
    n_train = len(data.x_train)
    settings = {
        "ft_epochs": args.ft_epochs,
        "ft_images": len(fine_tune_subset(n_train, min(1.0, args.ft_epochs), 0)),
        "batch": args.batch,
        "timing_steps": args.timing_steps,
        "timing_rounds": args.timing_rounds,
        "baseline_epochs": args.baseline_epochs,
        "command_args": "".join(f" {a}" for a in sys.argv[1:]),
    }
    fresh = {
        "baseline": {
            "model": base.name,
            "digest": weights_digest(base),
            "epochs": record["epochs"],
            "params": base.count_params(),
        },
        "n_train": n_train,
        "n_test": len(data.x_test),
        "rows": {},
        "runs": [],
    }
    result = json.loads(json_path.read_text()) if json_path.exists() else fresh
    same = result["baseline"] == fresh["baseline"] and all(
        result.get("settings", {}).get(k) == settings[k] for k in ("ft_epochs", "batch")
    )
    if not same:
        result = fresh
    result["settings"] = {**result.get("settings", {}), **settings}
    run = {"rows": [], "seconds": 0.0, "load": 0.0, "command": settings["command_args"]}
    result["runs"].append(run)

    def save(label):
        loads.append(os.getloadavg()[0])
        run["rows"].append(label)
        run["seconds"], run["load"] = time.time() - started, statistics.mean(loads)
        OUT.mkdir(exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        md_path.write_text(render(result))
        print(f"[{time.strftime('%H:%M:%S')}] {label} saved", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "float.tflite"
        tfopt.export.tflite(base, path, check_data=data.x_train[:50])
        result["float"] = measure(path, data)
        model_source = Path(tfopt.models.__file__).parent / "_fashion.py"
        options = record.get("config", {}).get("model", {}).get("options", {})
        tfmot = TfmotSide(base, data, model_source, options, tmp)
        result["versions"] = {k: tfmot.versions[k] for k in ("tfmot", "tf_keras")}
        ours = TfoptSide(base, data, tmp)
        try:
            replaced: set = set()
            for name, seed in work_items(args):
                if name == "timing":
                    result["timing"] = time_both(ours, tfmot, n_train, args)
                    save("timing")
                    continue
                run_pair(name, seed, result, replaced, ours, tfmot, data, args, tmp)
                save(f"{name} seed {seed}")
        finally:
            tfmot.close()
    print(md_path.read_text())
    return 0


def run_pair(name, seed, result, replaced, ours, tfmot, data, args, tmp):
    """Runs one row and seed on both sides (tfmot's process works while tfopt's side runs)."""
    row = recipe(row_specs()[name], len(data.x_train), args)
    if name not in replaced:  # a rerun replaces the row's earlier seeds
        result["rows"][name] = {"tfopt": {}, "tfmot": {}}
        replaced.add(name)
    outputs = {side: tmp / f"{name.replace(':', '_')}_{side}_{seed}.tflite" for side in SIDES}
    with_tfmot = row["kind"] != "float"
    if with_tfmot:
        tfmot.start_row(row, seed, outputs["tfmot"])
    try:
        answers = {"tfopt": ours.run_row(row, seed, outputs["tfopt"])}
    except Exception as e:  # recorded as the row's result; tfmot's answer is still read
        traceback.print_exc()
        answers = {"tfopt": {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}}
    if with_tfmot:
        answers["tfmot"] = tfmot._read()
    for side, answer in answers.items():
        if "error" not in answer:
            answer.update(measure(outputs[side], data))
            if row["kind"] == "cqat":
                answer["kernel_values"] = kernel_values(outputs[side])
        if "bn_refresh_path" in answer:
            answer["bn_refresh"] = measure(Path(answer.pop("bn_refresh_path")), data)
        result["rows"][name][side][str(seed)] = answer
        print(f"  {name} seed {seed} {side}: {answer.get('accuracy', answer.get('error'))}")


SIDES = ("tfopt", "tfmot")


if __name__ == "__main__":
    sys.exit(main())
