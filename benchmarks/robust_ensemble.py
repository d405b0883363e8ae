"""Adversarial training and ensemble distillation on MNIST-1D (tfopt.robust, tfopt.train).

Usage: python benchmarks/robust_ensemble.py [--quick] [--epochs 30] [--epsilon 0.2] [--members 3]
       [--student-epochs EPOCHS] [--students 24x64,32x128] [--student-seeds 1]

Adversarial training: `mnist1d_cnn` (width 32, dense 128; Adam 2e-3, batch 64, seed 0) trained
plainly, and the same model (same initial weights) trained through
`tfopt.robust.AdversarialModel(method="pgd", steps=3, adv_weight=0.5)` at ``--epsilon`` (an L-inf
radius; MNIST-1D inputs have std 1.0). Both are measured on the 1000 test samples: clean accuracy
and accuracy under a white-box PGD attack (`tfopt.robust.robust_accuracy`, 10 steps, step
2.5*eps/10, random start, seed 0) on the Keras model. Claim checked: PGD accuracy +>= 20 pt for a
clean-accuracy cost <= 2 pt.

Ensemble: ``--members`` `mnist1d_cnn` members (seeds 1..K) trained by tfopt's one trainer
(`tfopt._training.fit`: Adam 2e-3 with a cosine schedule, batch 64, ``--epochs``, training-only
shift (3 samples), noise (0.1) and mixup (Beta(1, 1)) augmentation), averaged in probability
(`tfopt.train.ensemble_model`). Each student `mnist1d_cnn(width=W, dense=D)` of ``--students``
(WxD; 32x128 is a member's own size, 24x64 about 40% of it) is distilled from the ensemble for
``--student-epochs`` with
`tfopt.distill.Distiller` doing function matching: the same augmentation plus mixup (Beta(1, 1))
applied before *both* teacher and student, the teacher run online on exactly the student's inputs,
T=1, alpha=0 (soft targets only). Its size-matched twins have the same architecture and initial
weights and the same epochs, schedule and augmentation, trained on the labels alone by the same
trainer: once with mixup (labels mixed; the members' recipe) and once without. Claims checked per
student: within 1 pt of the ensemble; beats the better twin. ``--student-seeds N`` repeats each
student and its twins with seeds 100..99+N (initial weights, shuffling, augmentation) and reports
the means, with each seed's values below the table.
Writes benchmarks/results/robust_ensemble.{json,md}; the load average is recorded.
"""

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt._stats import PairedDelta, correct, paired_delta

keras = import_keras()
HERE = Path(__file__).parent
LR, BATCH = 2e-3, 64
AUGMENT = {"shift": 3, "noise": 0.1}  # training-only augmentation of members, twins, students
MIXUP = 1.0  # Beta(1, 1): members and the first twin mix labels, the student's teacher mixed inputs


def compile_model(model, lr=LR):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def acc(model, data) -> float:
    return float(right(model, data).mean())


def right(model, data) -> np.ndarray:
    """Per-test-sample correctness: two models' difference is paired on it (tfopt._stats)."""
    return correct(model.predict(data.x_test, batch_size=256, verbose=0), data.y_test)


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


def recipe(epochs: int, mixup: float = 0.0):
    """The one trainer's options for members and twins (`tfopt._training.fit`)."""
    from tfopt.config._schema import TrainConfig

    return TrainConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": BATCH,
            "learning_rate": LR,
            "lr_schedule": "cosine",
            "augment": {**AUGMENT, "mixup": mixup},
        }
    )


def ensemble(data, epochs, members, student_epochs, students, student_seeds=1) -> dict:
    from tfopt._training import fit as train

    seeds = itertools.count(1)  # member i: shuffling and augmentation seeded by i too
    t = time.time()
    models = tfopt.train.train_ensemble(
        lambda: tfopt.models.get("mnist1d_cnn"),
        lambda m: train(m, recipe(epochs, MIXUP), data, seed=next(seeds)),
        members=members,
        seed=1,
    )
    t_members = time.time() - t
    scores = tfopt.train.ensemble_accuracy(models, data.x_test, data.y_test)
    teacher = tfopt.train.ensemble_model(models)
    teacher_right = right(teacher, data)
    return {
        "members": scores["members"],
        "best_member": scores["best_member"],
        "ensemble": scores["ensemble"],
        "member_params": int(models[0].count_params()),
        "members_train_s": round(t_members, 1),
        "student_epochs": student_epochs,
        "student_seeds": student_seeds,
        "students": [
            averaged(
                [
                    distill(data, teacher, student_epochs, options, teacher_right, seed=100 + i)
                    for i in range(student_seeds)
                ]
            )
            for options in students
        ],
    }


def averaged(runs: list[dict]) -> dict:
    """One student size over seeds: mean accuracies, each seed's values under ``"seeds"``."""
    keys = ("student", "twin_mixup", "twin")
    out = {**runs[0], **{k: float(np.mean([r[k] for r in runs])) for k in keys}}
    out["best_twin"] = max(out["twin_mixup"], out["twin"])
    out["seeds"] = {k: [r[k] for r in runs] for k in keys}
    out["paired"] = [r["paired"] for r in runs]
    return out


def distill(data, teacher, student_epochs, student, teacher_right, seed=100) -> dict:
    """One student distilled from ``teacher`` and its two size-matched twins (labels only), all
    from the same initial weights; ``seed`` sets them, the shuffling and the augmentation.
    ``paired``: the student vs each twin and vs the teacher, paired on the same test samples."""
    from tfopt._training import augmentation_layers, learning_rate
    from tfopt._training import fit as train

    keras.utils.set_random_seed(seed)
    pupil = tfopt.models.get("mnist1d_cnn", **student)
    twins, twins_right = {}, {}
    for mixup in (MIXUP, 0.0):
        twin = tfopt.models.get("mnist1d_cnn", **student)
        twin.set_weights(pupil.get_weights())
        keras.utils.set_random_seed(seed)
        train(twin, recipe(student_epochs, mixup), data, seed=seed)
        twins_right[mixup] = right(twin, data)
        twins[mixup] = float(twins_right[mixup].mean())
    r = recipe(student_epochs)
    d = tfopt.distill.Distiller(
        teacher=teacher,
        student=pupil,
        temperature=1.0,
        alpha=0.0,
        augment=augmentation_layers(r.augment, data.x_train.shape[1:], seed=seed),
        mixup=MIXUP,
    )
    steps = -(-len(data.x_train) // BATCH)
    d.compile(
        optimizer=keras.optimizers.Adam(learning_rate(r, steps, student_epochs)),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(seed)
    t = time.time()
    d.fit(data.x_train, data.y_train, batch_size=BATCH, epochs=student_epochs, verbose=0)
    student_right = right(pupil, data)
    return {
        "options": student,
        "params": int(pupil.count_params()),
        "student": float(student_right.mean()),
        "paired": {
            "student_vs_twin_mixup": paired_delta(twins_right[MIXUP], student_right).to_dict(),
            "student_vs_twin": paired_delta(twins_right[0.0], student_right).to_dict(),
            "student_vs_ensemble": paired_delta(teacher_right, student_right).to_dict(),
        },
        "twin_mixup": twins[MIXUP],
        "twin": twins[0.0],
        "best_twin": max(twins.values()),
        "train_s": round(time.time() - t, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 epochs, 2 members (a smoke run)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--student-epochs", type=int, help="student and twins (default: --epochs)")
    ap.add_argument(
        "--students",
        default="24x64,32x128",
        help="student sizes as WIDTHxDENSE, comma-separated (32x128 is a member's size)",
    )
    ap.add_argument(
        "--student-seeds", type=int, default=1, help="seeds per student size (means reported)"
    )
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.members = 8, 2
    args.student_epochs = args.student_epochs or args.epochs
    load = list(os.getloadavg())
    started = time.time()
    data = tfopt.data.load("mnist1d", seed=0)
    adv = adversarial(data, args.epochs, args.epsilon)
    students = [
        dict(zip(("width", "dense"), map(int, size.split("x"))))
        for size in args.students.split(",")
    ]
    ens = ensemble(
        data, args.epochs, args.members, args.student_epochs, students, args.student_seeds
    )
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
            "student_within_1pt_of_ensemble": [
                ens["ensemble"] - st["student"] <= 0.01 for st in ens["students"]
            ],
            "student_beats_twin": [st["student"] > st["best_twin"] for st in ens["students"]],
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
    se, verdicts, n = e["student_epochs"], [], e.get("student_seeds", 1)
    mean = f", mean of {n} seeds" if n > 1 else ""
    lines = [
        "## Adversarial training and ensemble distillation (MNIST-1D)",
        "",
        "`python benchmarks/robust_ensemble.py"
        + (" --quick" if r["quick"] else f" --epochs {r['epochs']} --members {r['members']}")
        + f" --epsilon {r['epsilon']} --students "
        + ",".join(f"{st['options']['width']}x{st['options']['dense']}" for st in e["students"])
        + (f" --student-seeds {n}" if n > 1 else "")
        + "`: "
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
    ]
    for st, within, beats in zip(
        e["students"],
        r["claims"]["student_within_1pt_of_ensemble"],
        r["claims"]["student_beats_twin"],
    ):
        size = f"width {st['options']['width']}, dense {st['options']['dense']}"
        lines += [
            f"| student distilled from the ensemble ({size}; {se} epochs, augmentation + mixup "
            f"seen by teacher and student, T=1, alpha=0{mean}) | {st['params']:,} | "
            f"{st['student']:.3f} |",
            f"| size-matched twin (same student and epochs, labels only, with mixup{mean}) | "
            f"{st['params']:,} | {st['twin_mixup']:.3f} |",
            f"| size-matched twin (same student and epochs, labels only, no mixup{mean}) | "
            f"{st['params']:,} | {st['twin']:.3f} |",
        ]
        verdicts.append(
            f"{size}: within 1 pt of the ensemble: {'yes' if within else 'NO'} "
            f"({100 * (e['ensemble'] - st['student']):+.1f} pt gap); beats the better twin: "
            f"{'yes' if beats else 'NO'} ({100 * (st['student'] - st['best_twin']):+.1f} pt)"
        )
    lines += [
        "",
        f"Members and twins: Adam {LR:g} with a cosine schedule, batch {BATCH}, training-only "
        f"shift {AUGMENT['shift']}, noise {AUGMENT['noise']} and mixup Beta({MIXUP:g}, {MIXUP:g}) "
        f"(tfopt's one trainer); members {r['epochs']} epochs. Students: "
        + "; ".join(verdicts)
        + ".",
        "",
    ]
    if n > 1:
        named = (
            ("student", "student"),
            ("twin_mixup", "twin with mixup"),
            ("twin", "twin without"),
        )
        lines += [
            f"Per seed (100 to {99 + n}): "
            + "; ".join(
                f"width {st['options']['width']}: "
                + ", ".join(
                    f"{name} {' '.join(f'{v:.3f}' for v in st['seeds'][key])}"
                    for key, name in named
                )
                for st in e["students"]
            )
            + ".",
            "",
        ]
    return "\n".join(lines + paired_lines(e["students"]))


def paired_lines(students) -> list[str]:
    """Each student vs its twins and the ensemble, paired on the same test samples, per seed."""
    lines = []
    for st in students:
        if not isinstance(st.get("paired"), list):
            continue  # measured before the paired deltas were recorded
        parts = [
            f"{what} " + "; ".join(PairedDelta(**p[key]).as_points() for p in st["paired"])
            for key, what in (
                ("student_vs_twin_mixup", "vs twin with mixup"),
                ("student_vs_twin", "vs twin without"),
                ("student_vs_ensemble", "vs the ensemble"),
            )
        ]
        lines.append(f"- width {st['options']['width']}: student {'. '.join(parts)}")
    if not lines:
        return []
    return [
        "Student differences, paired on the same test samples (tfopt._stats.paired_delta, 95% "
        "bootstrap interval), one entry per seed:",
        *lines,
        "",
    ]


if __name__ == "__main__":
    main()
