"""`tfopt run [CONFIG|NAME|MODEL.keras] [--model M] [--data D] [--out DIR] [key=value ...]`."""

from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="run a YAML recipe end to end (the embedded default when CONFIG is omitted)",
        description="Train the baseline, apply the recipe steps, export, benchmark, and write a "
        "report to runs/<name>/. Without CONFIG, runs the embedded configs/default.yaml.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config file, or the name of a shipped config (default, prune_qat, "
        "compress_all, fashion); a .keras/.h5 file here is the --model of the default config "
        "(default: the embedded default.yaml)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. train.epochs=5 steps.0.target_sparsity=0.9",
    )
    p.add_argument(
        "--out",
        help="run directory (default: runs/<name>, or runs/<name>-2, ... when taken; "
        "never overwritten without --overwrite)",
    )
    p.add_argument("--model", help="zoo model name or .keras/.h5 file (sets model.name/path)")
    p.add_argument("--data", help="dataset name or .npz file (sets data.name)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it holds an earlier tfopt run (other directories are never deleted)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config against the built model and the data (filters, shapes, "
        "labels, classes; nothing is trained), print it, then exit",
    )
    return p


def main(args) -> int:
    from tfopt import config
    from tfopt.cli._common import input_overrides, split_config_arg

    path, overrides = args.config, list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]  # `tfopt run train.epochs=5`
    path, model = split_config_arg(path, args.model)
    if model and not args.model:
        note = f"{model} is a model, not a config: running {path or 'the default config'} on it"
        hint = "add train.epochs=0 to keep its trained weights as they are"
        print(f"[tfopt] {note} (as with --model {model}); {hint}", file=sys.stderr, flush=True)
    overrides = input_overrides(model=model, data=args.data) + overrides
    cfg = config.load(path, overrides=overrides)
    if args.check:  # the config, then the model, data and steps as `run` would see them
        import yaml

        from tfopt._pipeline import check

        check(cfg)
        print(yaml.safe_dump(cfg.model_dump(serialize_as_any=True), sort_keys=False), end="")
        return 0
    from tfopt._pipeline import run

    run(cfg, out_dir=args.out, overwrite=args.overwrite)
    return 0
