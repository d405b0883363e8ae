"""`tfopt run [CONFIG] [--out DIR] [key=value ...]`."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="run a YAML recipe end to end (the embedded default when CONFIG is omitted)",
        description="Train the baseline, apply the recipe steps, export, benchmark, and write a "
        "report to runs/<name>/. Without CONFIG, runs the embedded configs/default.yaml.",
    )
    p.add_argument(
        "config", nargs="?", help="YAML config file (default: the embedded default.yaml)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. train.epochs=5 steps.0.target_sparsity=0.9",
    )
    p.add_argument("--out", help="run directory (default: runs/<name>, never overwritten)")
    p.add_argument(
        "--check", action="store_true", help="validate the config and print it, then exit"
    )
    return p


def main(args) -> int:
    from tfopt import config

    path, overrides = args.config, list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]  # `tfopt run train.epochs=5`
    cfg = config.load(path, overrides=overrides)
    if args.check:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(serialize_as_any=True), sort_keys=False), end="")
        return 0
    from tfopt._pipeline import run

    run(cfg, out_dir=args.out)
    return 0
