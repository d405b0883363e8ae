"""`tfopt auto [CONFIG] --max-accuracy-drop X [--time-budget S] [--max-trials N] [--out DIR]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from tfopt import _formats as formats
from tfopt.cli._common import add_distributed_args

_logger = logging.getLogger(__name__)

# `tfopt auto`'s exit code when no candidate meets the budgets (the closest is still written)
EXIT_NO_FIT = 3


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
        "with the same --out resumes the search. The first candidate is the unchanged model in "
        "int8 (PTQ; then QAT if PTQ misses the budget), so --max-trials 1 returns a deployable "
        "model whenever int8 fits; the next recipes come from a per-layer sensitivity pass on "
        "the model (channel cuts, sparsity and 4-bit weights, one layer at a time).",
        epilog="exit codes: 0 a candidate within the budgets is in best.tflite; "
        f"{EXIT_NO_FIT} no candidate met the budgets: the closest one is written, outside the "
        "budget, to closest_over_budget.tflite and the last line counts the candidates each "
        "budget rejected; 1 an error; 2 a config error; 130 interrupted (Ctrl-C: the best "
        "candidate so far and the report are written).",
    )
    p.add_argument("config", nargs="?", help="YAML config (data, model, train sections are used)")
    _add_budget_args(p)
    _add_search_args(p)
    _add_input_args(p)
    add_distributed_args(
        p,
        workers_help="screen with a chief and N worker processes on this machine (KerasTuner's "
        "distributed mode over loopback, as `tfopt tune --workers`); refinement and the report "
        "follow in this process",
        chief_help="join the screening served by a chief at HOST:PORT as a worker (its --out "
        "must be shared with this machine: the chief's process reads the trials' files)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return p


def _add_budget_args(p) -> None:
    """The budget flags: what `budget_of` makes a `tfopt.auto.Budget` of."""
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        required=True,
        help="allowed accuracy drop as a fraction, e.g. 0.005 = half a point",
    )
    p.add_argument(
        "--max-ram",
        type=_size("--max-ram"),
        metavar="SIZE",
        help="reject candidates whose TFLite Micro arena (peak RAM, from its allocation "
        "recorder) exceeds SIZE, e.g. 64KB (KB = 1024 bytes; needs tflite-micro)",
    )
    p.add_argument(
        "--max-flash",
        type=_size("--max-flash"),
        metavar="SIZE",
        help="reject candidates whose flatbuffer (stored uncompressed in flash) exceeds SIZE, "
        "e.g. 256KB",
    )
    p.add_argument(
        "--max-latency",
        type=float,
        metavar="MS",
        help="reject candidates whose p50 latency of one request through the artifact (LiteRT on "
        "this machine; TFLite Micro for --target tflm) exceeds MS milliseconds",
    )
    p.add_argument(
        "--min-robust-accuracy",
        type=float,
        metavar="FRACTION",
        help="reject candidates whose val accuracy under PGD-10 at --robust-epsilon (examples "
        "made on the Keras model, run through the artifact) is below FRACTION, e.g. 0.5",
    )
    p.add_argument(
        "--robust-epsilon",
        type=float,
        metavar="EPS",
        help="the PGD attack's L-inf radius in input units (needed by --min-robust-accuracy)",
    )


def _add_search_args(p) -> None:
    """What to search for and for how long, and where the run directory is."""
    p.add_argument(
        "--target",
        choices=formats.targets(),
        default=None,
        help="the artifact format (default: tflite-int8, or tflite-dynamic when the model's int8 "
        "conversion fails, e.g. the calibrator crashing on an RNN; the log says so)",
    )
    p.add_argument(
        "--objective",
        choices=["size", "latency", "ram"],
        default="size",
        help="what to minimize: gzip size, p50 latency, or ram (TFLite Micro's arena) "
        "(default: size)",
    )
    p.add_argument(
        "--techniques",
        help="comma-separated subset of prune,prune_channels,quantize,cluster,distill "
        "(default: all available)",
    )
    p.add_argument("--time-budget", type=float, help="search time in seconds (no new trial after)")
    p.add_argument("--max-trials", type=int, help="number of trials (default 20 without a budget)")
    p.add_argument(
        "--out",
        help="run directory (default: runs/auto_<model file's stem, else config name>-<hash "
        "of the model, data and settings>, so the same command resumes and another model or "
        "data gets its own)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an earlier search in --out (only a directory tfopt created is removed)",
    )


def _add_input_args(p) -> None:
    """The baseline's data, model and training epochs (overriding CONFIG's)."""
    p.add_argument("--data", help="dataset name or .npz (overrides the config's data.name)")
    p.add_argument(
        "--model", help="zoo model name or .keras/.h5 file (overrides the config's model)"
    )
    p.add_argument("--epochs", type=int, help="baseline training epochs (overrides train.epochs)")


# the options a chief and its workers get from `tfopt auto --workers` (all but --workers and
# --overwrite, which the launcher handles)
_SHARED = (
    "max_accuracy_drop", "time_budget", "max_trials", "objective", "max_ram", "max_flash",
    "max_latency", "min_robust_accuracy", "robust_epsilon", "target", "techniques", "data", "model", "epochs",
)  # fmt: skip


def _child_args(args, out_dir: Path) -> list[str]:
    out = [args.config] if args.config else []
    for name in _SHARED:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    if args.quiet:
        out.append("--quiet")
    return [*out, "--out", str(out_dir.resolve())]


def _size(flag: str):
    """An argparse type for sizes (``64KB``), with the rule and the value in the error."""
    from tfopt._units import parse_size

    def parse(text: str) -> int:
        try:
            return parse_size(text, flag)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _config(args):
    from tfopt import config
    from tfopt.cli._common import input_overrides, split_config_arg

    path, model = split_config_arg(args.config, args.model)
    overrides = input_overrides(model=model, data=args.data)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    return config.load(path, overrides=overrides)


def auto_identity(cfg, args, techniques) -> dict:
    """What `tfopt auto` records in its run directory (and hashes into the default one): the
    model, the data, the baseline's training and the search settings. A resume with other ones
    is refused (`tfopt._rundir.claim_identity`)."""
    from tfopt import _rundir

    return {
        **_rundir.config_inputs(cfg),
        "train": cfg.train.model_dump(),
        "seed": cfg.seed,
        "search": {
            "max_accuracy_drop": args.max_accuracy_drop,
            "target": args.target,
            "objective": args.objective,
            "techniques": None if techniques is None else sorted(techniques),
            "max_ram": args.max_ram,
            "max_flash": args.max_flash,
            "min_robust_accuracy": args.min_robust_accuracy,
            "robust_epsilon": args.robust_epsilon,
            # only when set: the default run directory of an earlier command stays its own
            **({} if args.max_latency is None else {"max_latency_ms": args.max_latency}),
        },
    }


def default_run_dir(cfg, identity: dict) -> Path:
    """``runs/auto_<name>-<hash of identity>``: ``<name>`` is the model file's stem for an own
    model (``--model my_model.keras`` -> ``runs/auto_my_model-<hash>``), else the config's name."""
    import re

    from tfopt import _rundir

    name = Path(cfg.model.path).stem if cfg.model.path else cfg.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return Path("runs") / f"auto_{name}-{_rundir.short_hash(identity)}"


def baseline_model(cfg, data, out_dir: Path):
    """Loads ``out_dir/baseline.keras`` (a resumed run) or builds and trains the float baseline
    as `tfopt run` does (`tfopt._pipeline.build_baseline`, `fit_baseline`)."""
    from tfopt import _rundir
    from tfopt._backend import import_keras
    from tfopt._pipeline import build_baseline, fit_baseline
    from tfopt._steps import StepContext
    from tfopt.models import load

    keras = import_keras()
    saved = out_dir / "baseline.keras"
    if saved.exists():
        _logger.info(f"[auto] using the trained baseline of the earlier run: {saved}")
        return load(saved)
    _rundir.prepare(out_dir, resume=True, by="tfopt auto")  # before the fit writes its logs
    keras.utils.set_random_seed(cfg.seed)  # before building: the initial weights are seeded too
    ctx = StepContext(
        data=data, run_dir=out_dir, batch_size=cfg.train.batch_size, verbose=0, seed=cfg.seed
    )
    model = build_baseline(cfg, data, ctx)  # refused here, before it trains, if data won't fit
    if cfg.train.epochs:
        _logger.info(f"[auto] training the float baseline: {model.name}, {cfg.train.epochs} epochs")
    fit_baseline(cfg, model, ctx)  # the train: options, as in `tfopt run`
    _rundir.save_model(model, saved)  # atomic: a killed run leaves no half-written baseline
    return model


def budget_of(args):
    """The `tfopt.auto.Budget` of the budget flags (checked as it is made)."""
    from tfopt.auto import Budget

    return Budget(
        args.max_accuracy_drop,
        max_ram=args.max_ram,
        max_flash=args.max_flash,
        max_latency_ms=args.max_latency,
        min_robust_accuracy=args.min_robust_accuracy,
        robust_epsilon=args.robust_epsilon,
    )


def main(args) -> int:
    from tfopt.auto._optimize import check_search_args
    from tfopt.auto._search import DEFAULT_TARGET

    # every option is checked before the baseline trains
    budget = budget_of(args)
    check_search_args(time_budget=args.time_budget, max_trials=args.max_trials)
    budget.check_target(args.target or DEFAULT_TARGET, args.objective)
    if args.techniques:
        from tfopt.tune import TECHNIQUES

        for tech in args.techniques.split(","):
            if tech.strip() not in TECHNIQUES:
                raise ValueError(
                    f"Unrecognized technique {tech.strip()!r} in --techniques={args.techniques}. "
                    f"Supported: {list(TECHNIQUES)}"
                )
    from tfopt import _rundir
    from tfopt.tune import _distributed as dist

    dist.check_workers(args.workers)  # each is a TensorFlow process: capped by cores and memory
    if args.workers and (args.chief or args.serve):
        raise ValueError("--workers starts its own chief; it cannot be combined with --chief")
    role = "chief" if args.serve else "worker" if args.chief else None
    if args.chief:  # before the baseline: an unreachable chief is a one-line error
        dist.join(args.chief, timeout=args.connect_timeout)
    if args.serve:
        host, port = dist.parse_address(args.serve)
        os.environ.update(KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port))
    techniques = None if not args.techniques else [t.strip() for t in args.techniques.split(",")]
    cfg = _config(args)
    from tfopt.config._checks import check_no_strategy

    check_no_strategy(cfg, "tfopt auto")
    identity = auto_identity(cfg, args, techniques)
    if args.out:
        out_dir = Path(args.out)
    else:
        out_dir = default_run_dir(cfg, identity)
        print(f"[auto] run directory: {out_dir}", flush=True)
    # before the baseline of an earlier run in out_dir is reused: the same model, data, settings
    what = "`tfopt auto` run"
    if role is None:  # one process per run directory: the launcher's children share its lock
        with _rundir.claim_run(
            out_dir, "auto", identity, command="tfopt auto", what=what, overwrite=args.overwrite
        ):
            return _search(args, cfg, out_dir, budget=budget, techniques=techniques, role=role)
    _rundir.prepare(out_dir, resume=True, by="tfopt auto")
    _rundir.claim_identity(out_dir, "auto", identity, what=what)
    return _search(args, cfg, out_dir, budget=budget, techniques=techniques, role=role)


def _search(args, cfg, out_dir: Path, *, budget, techniques, role) -> int:
    """Loads the data and the baseline, then searches (screening in --workers children)."""
    from tfopt import data as data_mod
    from tfopt.tune import _distributed as dist

    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    print(f"[auto] data: {data}", flush=True)
    from tfopt.data._checks import check_attack_radius

    check_attack_radius(args.robust_epsilon, data.x_val, arg="--robust-epsilon")
    model = baseline_model(cfg, data, out_dir)
    time_budget = args.time_budget
    if args.workers:  # screening in a chief + workers (they load baseline.keras), then refine here
        started = time.monotonic()
        code = dist.launch(
            _child_args(args, out_dir),
            workers=args.workers,
            command="auto",
        )
        if code:
            print(f"tfopt: a search worker exited with code {code}", file=sys.stderr)
            return code
        if time_budget is not None:  # what the screening left of it goes to the refinement
            time_budget = max(1.0, time_budget - (time.monotonic() - started))
    from tfopt.auto._optimize import run_search

    res = run_search(
        model,
        data.train,
        data.val,
        budget,
        test=data.test,
        target=args.target,
        objective=args.objective,
        time_budget=time_budget,
        max_trials=args.max_trials,
        out_dir=out_dir,
        techniques=techniques,
        seed=cfg.seed,
        run_config=cfg,
        verbose=0 if args.quiet else 1,
        screen=not args.workers,
        role=role,
    )
    if role is not None:
        return 0
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
        print(_no_fit_line(res), file=sys.stderr, flush=True)
        return EXIT_NO_FIT
    return 0


def _no_fit_line(res) -> str:
    """The last line when no candidate met the budgets: the rejections per budget, the closest."""
    from tfopt.auto._candidate import rejection_text

    budget = res.budget
    text = "tfopt: no candidate within the budgets " + (
        f"(accuracy -{100 * budget.max_accuracy_drop:.2f} pt{budget.text()}): "
        + rejection_text(res.rejections, len(res.candidates), budget.limits())
    )
    if res.closest_path is not None:
        text += f"; closest, outside the budget: {res.closest_path}"
    if not res.candidates:
        text += f" (the search stopped before a candidate: {res.stopped})"
    return text
