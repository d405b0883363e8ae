"""`tfopt tune [CONFIG] [--model M] [--data D] [--max-trials N] [--workers N | --chief HOST:PORT]
[--out DIR] [key=value ...]`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tfopt.cli._common import add_distributed_args


def add_parser(sub):
    p = sub.add_parser(
        "tune",
        help="search the training recipe (optimizer, schedule, regularization, augmentation, "
        "width/depth) with KerasTuner",
        description="Search how to train CONFIG's model (a zoo builder) on CONFIG's data: "
        "optimizer, learning rate and schedule, batch size, epochs with early stopping, weight "
        "decay, label smoothing, dropout/L2, augmentation and width/depth (the config's tune: "
        "section sets the algorithm and overrides the space). Writes best.keras, best.yaml (a "
        "`tfopt run` config that retrains it) and report.md/.json/importance.png to --out; "
        "TensorBoard hparams logs under --out/search/tensorboard. Re-running with the same --out "
        "resumes the search.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config (default: the embedded default.yaml); a .keras/.h5 file here is --model",
    )
    p.add_argument(
        "--model",
        help="zoo model name, or a .keras/.h5 file: a transfer search that fine-tunes it (adds "
        "transfer.head=keep unless the config has a transfer: section); the report shows its "
        "starting accuracy beside the trials",
    )
    p.add_argument("--data", help="dataset name or .npz file (sets data.name)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. tune.space.optimizer=adamw tune.max_epochs=20",
    )
    p.add_argument("--max-trials", type=int, help="trial cap (overrides tune.max_trials)")
    p.add_argument(
        "--algorithm",
        choices=["hyperband", "bayesian", "random"],
        help="KerasTuner algorithm (overrides tune.algorithm; default hyperband)",
    )
    p.add_argument("--max-epochs", type=int, help="epochs of the longest trial (tune.max_epochs)")
    p.add_argument("--time-budget", type=float, help="seconds after which no trial starts")
    p.add_argument("--out", help="search directory (default: runs/tune_<config name>)")
    add_distributed_args(
        p,
        workers_help="run a chief and N worker processes on this machine (KerasTuner's "
        "distributed mode over loopback; each worker gets cores/N TensorFlow threads)",
        chief_help="join the search served by a chief at HOST:PORT as a worker "
        "(KERASTUNER_TUNER_ID names this worker; default tuner-<host>-<pid>)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard an earlier search in --out")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return p


def _overrides(args) -> list[str]:
    out = list(args.overrides)
    if args.algorithm:
        out.append(f"tune.algorithm={args.algorithm}")
    if args.max_epochs is not None:
        out.append(f"tune.max_epochs={args.max_epochs}")
    if args.time_budget is not None:
        out.append(f"tune.time_budget={args.time_budget}")
    return out


def _with_inputs(args, path, overrides) -> tuple[str | None, list[str]]:
    """``--model`` / ``--data`` (or a model file given as CONFIG) as config overrides, as in
    `tfopt run`; a model file is searched as a transfer (fine-tuning) of that model."""
    from tfopt import config as config_mod
    from tfopt.cli._common import input_overrides, is_model_file, split_config_arg

    path, model = split_config_arg(path, args.model)
    inputs = input_overrides(model=model, data=args.data)
    if is_model_file(model):
        raw = config_mod._schema.read_yaml(path or config_mod.default_config_path())
        if raw.get("transfer") is None and not any(o.startswith("transfer") for o in overrides):
            inputs.append("transfer.head=keep")  # the model already has its classes
    return path, inputs + overrides


def main(args) -> int:
    from tfopt.tune import _distributed as dist
    from tfopt.tune import _search_training as st

    path, overrides = args.config, _overrides(args)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]  # `tfopt tune tune.max_epochs=5`
    path, overrides = _with_inputs(args, path, overrides)
    dist.check_workers(args.workers)  # each is a TensorFlow process: capped by cores and memory
    if args.workers and (args.chief or args.serve):
        raise ValueError("--workers starts its own chief; it cannot be combined with --chief")
    chief = dist.parse_address(args.chief) if args.chief else None
    cfg, raw = st._load_config(path, overrides)  # config errors first, before anything runs
    out_dir = Path(args.out) if args.out else Path("runs") / f"tune_{cfg.name}"
    if args.quiet:  # the progress lines of the tfopt loggers (`tfopt.cli.show_progress`)
        logging.getLogger("tfopt").setLevel(logging.WARNING)

    if chief is not None:  # a worker of a chief elsewhere (or of our own launcher)
        dist.join(args.chief, timeout=args.connect_timeout)
        data, hm = st.prepare(cfg, max_trials=args.max_trials)
        tuner = st.make_tuner(
            cfg, hm, out_dir, max_trials=args.max_trials, on_trial_done=st.progress()
        )
        tuner.search(data)
        logging.getLogger(__name__).info(f"[tune] worker {os.environ['KERASTUNER_TUNER_ID']} done")
        return 0
    if args.serve:  # the chief: serves the oracle until every worker stopped
        host, port = dist.parse_address(args.serve)
        data, hm = st.prepare(cfg, max_trials=args.max_trials)
        st.make_tuner(cfg, hm, out_dir, max_trials=args.max_trials).serve(host, port)
        return 0

    if not args.workers:  # --overwrite removes only a directory tfopt created
        res = st.search_training(
            path,
            overrides=overrides,
            out_dir=out_dir,
            max_trials=args.max_trials,
            overwrite=args.overwrite,
        )
        return 0 if res.best is not None else 1
    started = time.time()
    data, hm = st.prepare(cfg, max_trials=args.max_trials)  # a bad space fails here
    with st.claim(cfg, out_dir, overwrite=args.overwrite):
        st.record_start(hm, data, out_dir)
        child = [*([path] if path else []), *overrides, "--out", str(out_dir.resolve())]
        if args.max_trials is not None:
            child += ["--max-trials", str(args.max_trials)]
        if args.quiet:
            child.append("--quiet")
        code = dist.launch(child, workers=args.workers)
        res = st.finalize(raw, out_dir, seconds=time.time() - started)
    if code:
        return code
    return 0 if res.best is not None else 1
