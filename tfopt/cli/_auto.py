"""`tfopt auto [CONFIG] --max-accuracy-drop X [--time-budget S] [--max-trials N] [--out DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path

from tfopt import _formats as formats


def add_parser(sub):
    p = sub.add_parser(
        "auto",
        help="search compression recipes for the smallest artifact within an accuracy budget",
        description="Train (or load) the float baseline from CONFIG's data/model/train sections "
        "(the embedded default config when omitted), then search compression recipes (pruning, "
        "channel pruning, clustering, QAT/PTQ, distillation) and keep the smallest (or fastest) "
        "exported artifact whose accuracy, measured through the artifact, stays within "
        "--max-accuracy-drop of the float baseline. Writes best.tflite, recipe.yaml (a `tfopt run` "
        "config that rebuilds best.tflite) and report.json/.md/pareto.png to --out; re-running "
        "with the same --out resumes the search.",
    )
    p.add_argument("config", nargs="?", help="YAML config (data, model, train sections are used)")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        required=True,
        help="allowed accuracy drop as a fraction, e.g. 0.005 = half a point",
    )
    p.add_argument("--time-budget", type=float, help="search time in seconds (no new trial after)")
    p.add_argument("--max-trials", type=int, help="number of trials (default 20 without a budget)")
    p.add_argument("--out", help="run directory (default: runs/auto_<config name>)")
    p.add_argument("--objective", choices=["size", "latency"], default="size")
    p.add_argument(
        "--target",
        choices=formats.targets(),
        default="tflite-int8",
    )
    p.add_argument(
        "--techniques",
        help="comma-separated subset of prune,prune_channels,quantize,cluster,distill "
        "(default: all available)",
    )
    p.add_argument("--data", help="dataset name or .npz (overrides the config's data.name)")
    p.add_argument("--model", help="zoo model name or .keras file (overrides the config's model)")
    p.add_argument("--epochs", type=int, help="baseline training epochs (overrides train.epochs)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier search in --out")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return p


def _config(args):
    from tfopt import config

    overrides = []
    if args.data:
        overrides.append(f"data.name={args.data}")
    if args.model:
        if args.model.endswith(".keras"):
            overrides += [f"model.path={args.model}", "model.name=null"]
        else:
            overrides += [f"model.name={args.model}", "model.path=null"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    return config.load(args.config, overrides=overrides)


def baseline_model(cfg, data, out_dir: Path, *, log=print):
    """Loads ``out_dir/baseline.keras`` (a resumed run) or builds and trains the float baseline."""
    from tfopt._backend import import_keras
    from tfopt.models import get, load

    keras = import_keras()
    saved = out_dir / "baseline.keras"
    if saved.exists():
        log(f"[auto] using the trained baseline of the earlier run: {saved}")
        return load(saved)
    keras.utils.set_random_seed(cfg.seed)  # before building: the initial weights are seeded too
    if cfg.model.path:
        model = load(cfg.model.path)
    else:
        model = get(
            cfg.model.name,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            **cfg.model.options,
        )
    if cfg.train.epochs:
        log(f"[auto] training the float baseline: {model.name}, {cfg.train.epochs} epochs")
        from tfopt._training import fit

        fit(model, cfg.train, data, seed=cfg.seed)  # the train: options, as in `tfopt run`
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(saved)
    return model


def main(args) -> int:
    from tfopt import auto
    from tfopt import data as data_mod
    from tfopt.auto._optimize import check_budget

    check_budget(args.max_accuracy_drop)
    if args.techniques:
        from tfopt.tune import TECHNIQUES

        for tech in args.techniques.split(","):
            if tech.strip() not in TECHNIQUES:
                raise ValueError(
                    f"Unrecognized technique {tech.strip()!r} in --techniques={args.techniques}. "
                    f"Supported: {list(TECHNIQUES)}"
                )
    cfg = _config(args)
    out_dir = Path(args.out) if args.out else Path("runs") / f"auto_{cfg.name}"
    if args.overwrite and out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    print(f"[auto] data: {data}", flush=True)
    model = baseline_model(cfg, data, out_dir, log=lambda m: print(m, flush=True))
    res = auto.optimize(
        model,
        data.train,
        data.val,
        test=data.test,
        max_accuracy_drop=args.max_accuracy_drop,
        target=args.target,
        objective=args.objective,
        time_budget=args.time_budget,
        max_trials=args.max_trials,
        out_dir=out_dir,
        techniques=None if not args.techniques else [t.strip() for t in args.techniques.split(",")],
        seed=cfg.seed,
        run_config=cfg,
        verbose=0 if args.quiet else 1,
        log=lambda m: print(m, flush=True),
    )
    print(f"[auto] report: {res.report['markdown']}  plot: {res.report['plot']}", flush=True)
    if res.best is not None:
        print(
            f"[auto] gzip ratio {res.ratio:.1f}x (float32 TFLite gzip bytes / best gzip bytes); "
            f"replay with: tfopt run {res.recipe}",
            flush=True,
        )
    if res.stopped == "interrupted":
        return 130
    if res.best is None:
        print("tfopt: no candidate within the accuracy budget (see the report)", file=sys.stderr)
        return 1
    return 0
