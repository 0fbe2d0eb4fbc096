"""Command line: `python -m lib <command>`; run `python -m lib --help` for the commands.

    python -m lib run --profile quick --data shared --models CANet_tiny --seeds 0 1 2
    python -m lib run --profile full --data shared --part2
"""
from __future__ import annotations

import argparse
import sys
import time

from lib.config import PROFILES
from lib.data import SOURCE_ENV, resolve_source
from lib.paths import output_dirs


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="smoke", choices=list(PROFILES),
                   help="smoke: CI-sized; quick: reduced, CPU-friendly; full: the STUDY.md recipe (GPU)")
    p.add_argument("--data", default=None,
                   help=f"'official' (torchvision download), 'shared' (../shared JPEG copy) or a path to an "
                        f"image-folder copy / .tar.gz; default: ${SOURCE_ENV} or 'official'")
    p.add_argument("--publish", action="store_true",
                   help="write smoke/quick output to the committed places (results/<profile>/, figs/, report.md)")


def cmd_run(args) -> int:
    """Train the selected experiments; finished results with the same config are reused (merge)."""
    from lib import bn_study
    from lib.experiments import bn_experiments, part1_experiments
    from lib.train import train

    source = resolve_source(args.data)
    dirs = output_dirs(args.profile, publish=args.publish or None)
    want_p1 = args.part1 or args.models or not (args.part2 or args.probe)
    configs = part1_experiments(args.profile, source, seeds=args.seeds, models=args.models) if want_p1 else []
    if args.part2:
        configs += bn_experiments(args.profile, source)
    if args.only:
        configs = [c for c in configs if c.name in set(args.only)]
    t0 = time.perf_counter()
    for cfg in configs:
        r = train(cfg, dirs=dirs, force=args.force, progress=not args.quiet,
                  max_epochs_this_call=args.max_epochs_this_call)
        acc = r.get("test_acc")
        print(f"{cfg.name}: {r['status']}" + (f", test acc {100 * acc:.2f}%" if acc is not None else ""))
    if args.probe:
        for pcfg in bn_study.probe_configs(args.profile, source):
            bn_study.run_probe(pcfg, dirs, force=args.force)
            print(f"probe {pcfg.model}: done")
    print(f"{len(configs)} experiment(s) in {time.perf_counter() - t0:.0f} s; results in {dirs.results}")
    return 0


def main(argv=None) -> int:
    """Entry point of `python -m lib`."""
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train experiments (Part 1 comparison and/or the BN protocol)")
    _add_common(p)
    p.add_argument("--part1", action="store_true", help="the Part 1 comparison (default when nothing is chosen)")
    p.add_argument("--part2", action="store_true", help="the BN protocol runs (VGG-A +-BN at four lrs)")
    p.add_argument("--probe", action="store_true", help="the Santurkar et al. probe runs")
    p.add_argument("--models", nargs="+", help="Part 1 models to run (default: all nine)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="Part 1 seeds (default: 0)")
    p.add_argument("--only", nargs="+", help="restrict to these experiment names (e.g. p1-CANet-s0)")
    p.add_argument("--force", action="store_true", help="retrain even when a matching result exists")
    p.add_argument("--max-epochs-this-call", type=int, default=None,
                   help="stop (resumably) after this many epochs per experiment")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
