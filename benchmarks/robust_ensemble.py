"""Adversarial training and ensemble distillation on MNIST-1D (tfopt.robust, tfopt.train).

Usage: python benchmarks/robust_ensemble.py [--quick] [--epochs 30] [--epsilon 0.2] [--members 3]

Adversarial training: `mnist1d_cnn` (width 32, dense 128; Adam 2e-3, batch 64, seed 0) trained
plainly, and the same model (same initial weights) trained through
`tfopt.robust.AdversarialModel(method="pgd", steps=3, adv_weight=0.5)` at ``--epsilon`` (an L-inf
radius; MNIST-1D inputs have std 1.0). Both are measured on the 1000 test samples: clean accuracy
and accuracy under a white-box PGD attack (`tfopt.robust.robust_accuracy`, 10 steps, step
2.5*eps/10, random start, seed 0) on the Keras model. Claim checked: PGD accuracy +>= 20 pt for a
clean-accuracy cost <= 2 pt.

Ensemble: ``--members`` `mnist1d_cnn` members (seeds 1..K, same recipe) averaged in probability
(`tfopt.train.ensemble_model`); a student `mnist1d_cnn(width=16, dense=64)` distilled from the
ensemble with `tfopt.distill.Distiller` (T=4, alpha=0.1, teacher outputs precomputed), and its
size-matched twin: the same architecture and initial weights trained on the labels only. Claims
checked: student within 1 pt of the ensemble; student beats the twin.
Writes benchmarks/results/robust_ensemble.{json,md}; the load average is recorded.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras

keras = import_keras()
HERE = Path(__file__).parent
LR, BATCH = 2e-3, 64
STUDENT = {"width": 16, "dense": 64}  # about a quarter of a member's parameters


def compile_model(model, lr=LR):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def acc(model, data) -> float:
    out = model.predict(data.x_test, batch_size=256, verbose=0)
    return float(np.mean(out.argmax(-1) == data.y_test))


def fit(model, data, epochs):
    model.fit(data.x_train, data.y_train, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)


def adversarial(data, epochs, eps) -> dict:
    keras.utils.set_random_seed(0)
    plain = tfopt.models.get("mnist1d_cnn")
    adv_inner = tfopt.models.get("mnist1d_cnn")
    adv_inner.set_weights(plain.get_weights())
    compile_model(plain)
    t = time.time()
    keras.utils.set_random_seed(0)
    fit(plain, data, epochs)
    t_plain = time.time() - t
    adv = tfopt.robust.AdversarialModel(adv_inner, epsilon=eps, method="pgd", steps=3)
    compile_model(adv)
    t = time.time()
    keras.utils.set_random_seed(0)
    fit(adv, data, epochs)
    t_adv = time.time() - t
    rows = {}
    for name, model, secs in (("plain", plain, t_plain), ("adversarial (PGD-3)", adv_inner, t_adv)):
        rows[name] = {
            "clean": acc(model, data),
            "pgd": tfopt.robust.robust_accuracy(
                model, data.x_test, data.y_test, epsilon=eps, steps=10
            ),
            "fgsm": float(
                np.mean(
                    model.predict(
                        tfopt.robust.fgsm(model, data.x_test, data.y_test, epsilon=eps),
                        verbose=0,
                    ).argmax(-1)
                    == data.y_test
                )
            ),
            "train_s": round(secs, 1),
        }
    p, a = rows["plain"], rows["adversarial (PGD-3)"]
    return {
        "rows": rows,
        "pgd_gain_pt": round(100 * (a["pgd"] - p["pgd"]), 1),
        "clean_cost_pt": round(100 * (p["clean"] - a["clean"]), 1),
    }


def ensemble(data, epochs, members) -> dict:
    def build():
        m = tfopt.models.get("mnist1d_cnn")
        compile_model(m)
        return m

    t = time.time()
    models = tfopt.train.train_ensemble(
        build, lambda m: fit(m, data, epochs), members=members, seed=1
    )
    t_members = time.time() - t
    scores = tfopt.train.ensemble_accuracy(models, data.x_test, data.y_test)
    teacher = tfopt.train.ensemble_model(models)
    keras.utils.set_random_seed(100)
    student = tfopt.models.get("mnist1d_cnn", **STUDENT)
    twin = tfopt.models.get("mnist1d_cnn", **STUDENT)
    twin.set_weights(student.get_weights())
    compile_model(twin)
    keras.utils.set_random_seed(100)
    fit(twin, data, epochs)
    d = tfopt.distill.Distiller(
        teacher=teacher, student=student, temperature=4.0, alpha=0.1, precompute_teacher=True
    )
    d.compile(optimizer=keras.optimizers.Adam(LR), metrics=["accuracy"])
    keras.utils.set_random_seed(100)
    d.fit(data.x_train, data.y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    return {
        "members": scores["members"],
        "best_member": scores["best_member"],
        "ensemble": scores["ensemble"],
        "student": acc(student, data),
        "twin": acc(twin, data),
        "member_params": int(models[0].count_params()),
        "student_params": int(student.count_params()),
        "members_train_s": round(t_members, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 epochs, 2 members (a smoke run)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--members", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.members = 8, 2
    load = list(os.getloadavg())
    started = time.time()
    data = tfopt.data.load("mnist1d", seed=0)
    adv = adversarial(data, args.epochs, args.epsilon)
    ens = ensemble(data, args.epochs, args.members)
    res = {
        "quick": args.quick,
        "epochs": args.epochs,
        "epsilon": args.epsilon,
        "members": args.members,
        "load_avg_start": load,
        "load_avg_end": list(os.getloadavg()),
        "seconds": round(time.time() - started, 1),
        "adversarial": adv,
        "ensemble": ens,
        "claims": {
            "pgd_gain_ge_20pt": adv["pgd_gain_pt"] >= 20.0,
            "clean_cost_le_2pt": adv["clean_cost_pt"] <= 2.0,
            "student_within_1pt_of_ensemble": ens["ensemble"] - ens["student"] <= 0.01,
            "student_beats_twin": ens["student"] > ens["twin"],
        },
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "robust_ensemble.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "robust_ensemble.md").write_text(md)
    print(md)


def markdown(r) -> str:
    a, e = r["adversarial"], r["ensemble"]
    lines = [
        "## Adversarial training and ensemble distillation (MNIST-1D)",
        "",
        "`python benchmarks/robust_ensemble.py"
        + (" --quick" if r["quick"] else f" --epochs {r['epochs']} --members {r['members']}")
        + f" --epsilon {r['epsilon']}`: "
        f"{r['epochs']} epochs, epsilon {r['epsilon']} (L-inf; inputs have std 1.0), "
        f"{r['members']} members; {r['seconds']:.0f} s, load average "
        f"{r['load_avg_start'][0]:.1f} at the start and {r['load_avg_end'][0]:.1f} at the end "
        "(2 cores shared with other jobs).",
        "",
        "| mnist1d_cnn | clean acc | PGD-10 acc (white-box, Keras) | FGSM acc | train s |",
        "|---|---|---|---|---|",
    ]
    for name, row in a["rows"].items():
        lines.append(
            f"| {name} | {row['clean']:.3f} | {row['pgd']:.3f} | {row['fgsm']:.3f} | "
            f"{row['train_s']} |"
        )
    lines += [
        "",
        f"PGD accuracy gain: {a['pgd_gain_pt']:+.1f} pt (claim >= 20: "
        f"{'yes' if r['claims']['pgd_gain_ge_20pt'] else 'NO'}); clean accuracy cost: "
        f"{a['clean_cost_pt']:.1f} pt (claim <= 2: "
        f"{'yes' if r['claims']['clean_cost_le_2pt'] else 'NO'}).",
        "",
        "| model | params | test acc |",
        "|---|---|---|",
        f"| members (each) | {e['member_params']:,} | "
        + ", ".join(f"{m:.3f}" for m in e["members"])
        + " |",
        f"| ensemble of {r['members']} (mean probabilities) | {r['members'] * e['member_params']:,} "
        f"| {e['ensemble']:.3f} |",
        f"| student distilled from the ensemble (width 16, dense 64) | {e['student_params']:,} | "
        f"{e['student']:.3f} |",
        f"| size-matched twin (same student, labels only) | {e['student_params']:,} | "
        f"{e['twin']:.3f} |",
        "",
        f"Student within 1 pt of the ensemble: "
        f"{'yes' if r['claims']['student_within_1pt_of_ensemble'] else 'NO'} "
        f"({100 * (e['ensemble'] - e['student']):+.1f} pt gap); beats its twin: "
        f"{'yes' if r['claims']['student_beats_twin'] else 'NO'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
