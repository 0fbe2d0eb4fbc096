"""Command line: `python -m lib <command>`; run `python -m lib --help` for the commands.

    python -m lib run --profile quick --data shared --models CANet_tiny --seeds 0 1 2
    python -m lib run --profile full --data shared --part2
    python -m lib study --profile smoke --data shared          # the notebooks headless, then report.md
    python -m lib report --profile quick --publish
    python -m lib refresh                                      # report.md + README speed table from committed files
    python -m lib status --profile quick --data shared --publish --seeds 0 1 2   # done / resumable / missing
    python -m lib bench --models CANet CANet_tiny ResNet18 VGG_A_BN --data shared   # naive vs fast epoch

Exit status: 0 done; 1 `study` stopped (a notebook failed, or before the first one it refused what it would
train, replace or, with --reuse-only, find missing: `study stopped: ...` on stderr); 2 bad input (an unknown
option, model or notebook, missing or corrupt data, a missing file), reported as one `error: ...` line on stderr
without a traceback (set CIFAR10_TRACEBACK=1 to see where it was raised); 3 `bench --check-graphs` found a model
whose CUDA-graphed steps differ. Any other exception is a bug and ends in its traceback.
"""
from __future__ import annotations

import argparse
import math
import re
import os
import sys
import time
import traceback
from pathlib import Path

from lib import paths
from lib.config import CANET_MODELS, MODEL_NAMES, PART1_MODELS, PRECISIONS, PROFILES
from lib.data import SOURCE_ENV, canonical_source
from lib.paths import REPO, output_dirs

TRACEBACK_ENV = "CIFAR10_TRACEBACK"  # 1: let bad-input errors end in their traceback too
# What the library raises for bad input (lib.data.DataError is a ValueError; an unknown model, notebook or
# experiment raises ValueError; a missing file FileNotFoundError), from its own code (input_error). Other
# exceptions, and these raised inside torch, numpy or json, are bugs.
INPUT_ERRORS = (ValueError, FileNotFoundError)
STUDY_PROG_ENV = "CIFAR10_STUDY_PROG"  # the name `study`'s usage and errors give it (scripts/main.sh sets its own)
LIB_DIR = Path(__file__).resolve().parent
PRECISION_HELP = ("the Part 1 runs' arithmetic (another configuration: a finished result of the same run in "
                  "another precision is replaced only with --force): auto, the recipe's (bf16 autocast on a GPU, "
                  "fp32 on a CPU; the default); bf16: bf16 autocast on every device (on a CPU with AMX-bf16, such as "
                  "Intel Xeon 4th generation and later, CANet and ResNet epochs train 1.6-3.2x faster than in fp32, "
                  "ShuffleNetV2 and MobileNetV2 not faster: README); fp32: true fp32 everywhere (TF32 off on a GPU)")


def input_error(err: BaseException) -> bool:
    """Whether `err` is bad input as this package reports it: one of INPUT_ERRORS raised by code in lib/ (not by
    a library it calls, e.g. torch's ValueError about a batch of one, which is a bug to see in full)."""
    frames = traceback.extract_tb(err.__traceback__)
    return isinstance(err, INPUT_ERRORS) and bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(LIB_DIR)


def check_models(option: str, names, known, kind: str) -> None:
    """Raise ValueError naming each of `names` not in `known`, with its closest known name (any case) and the list."""
    from difflib import get_close_matches

    by_lower = {k.lower(): k for k in known}
    bad = []
    for name in dict.fromkeys(names or ()):
        if name not in known:  # a model of the study, but not of these, is no typo
            close = [] if name in MODEL_NAMES else get_close_matches(name.lower(), list(by_lower), n=1)
            bad.append(repr(name) + (f" (did you mean {by_lower[close[0]]}?)" if close else ""))
    if bad:
        what = f"is not a {kind}" if len(bad) == 1 else f"are not {kind}s"
        raise ValueError(f"{option}: {', '.join(bad)} {what}; choose from {', '.join(known)}")


def _add_common(p: argparse.ArgumentParser,
                publish: str = "write smoke/quick output to the committed places (results/<profile>/, "
                               "figs/<profile>/, report.md)") -> None:
    p.add_argument("--profile", default="smoke", choices=list(PROFILES),
                   help="smoke (the default): CI-sized; quick: reduced, CPU-friendly; full: the STUDY.md recipe (GPU)")
    p.add_argument("--data", default=None,
                   help=f"'official' (torchvision download), 'shared' (../shared JPEG copy) or a path to an "
                        f"image-folder copy / .tar.gz; default: ${SOURCE_ENV} or 'official'")
    p.add_argument("--publish", action="store_true", help=publish)


def whole_number(minimum: int, what: str = "must be", maximum: int | None = None):
    """An argparse type: a whole number >= minimum (and <= maximum), else an error '<what> a whole number >=
    <minimum>, not ...' ('from <minimum> to <maximum>' with a maximum)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"{what} a whole number {bounds}, not {text!r}")
        return value
    return parse


def number_above(minimum: float, inclusive: bool = False):
    """An argparse type: a finite number > minimum (>= with inclusive), else an error that says so."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a number {'>=' if inclusive else '>'} {minimum:g}, not {text!r}")
        return value
    return parse


# A seed names the result files (p1-<model>-s<seed>); at most 2**32 - 1, which every random generator the study
# seeds takes (torch's, NumPy's, the DataLoader workers').
seed_number = whole_number(0, "a seed is", maximum=2**32 - 1)
positive_int = whole_number(1)


def device_option(text: str) -> str:
    """An argparse type: a device name lib.train.resolve_device takes ('auto', 'cpu', 'cuda', 'cuda:N')."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {text!r}")
    return text


def check_epochs(num_epochs: int | None) -> None:
    """--num-epochs, when given, must be a positive number of epochs."""
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"--num-epochs must be positive, not {num_epochs} (leave it out for the profile's epochs)")


def refuse_cpu_work(args, configs, source: str, dirs) -> None:
    """Raise ValueError naming what `lib run` would compute for the full profile on a machine without CUDA (its
    runs take hours to days on a CPU, as `study` says; --allow-cpu-training lets them); nothing if it has CUDA or
    all of it is done."""
    import torch

    from lib.pipeline import GPU_PROFILE

    if args.profile != GPU_PROFILE or torch.cuda.is_available():
        return
    from lib import bn_study
    from lib.part1 import CPU_COST_BATCH, cost_is_reused, cost_path
    from lib.results import device_name, read_json, reusable_run

    pending = [c.name for c in configs if args.force or reusable_run(c, dirs) is None]
    if args.probe:
        pending += [c.name for c in bn_study.probe_configs(args.profile, source)
                    if args.force or not bn_study.probe_done(c, dirs)]
    if args.slices and (args.force or not bn_study.slices_done(args.profile, source, dirs)):
        pending.append("loss slices")
    if args.costs:  # the ones compute_costs would measure here, not reuse
        cpu = device_name(torch.device("cpu"))
        pending += [f"cost-{m}" for m in args.models or PART1_MODELS
                    if args.force or not cost_path(dirs, m).exists()
                    or not cost_is_reused(read_json(cost_path(dirs, m)), cpu, CPU_COST_BATCH, False)]
    if pending:
        raise ValueError(f"the {args.profile} profile would compute {len(pending)} experiment(s) or file(s) on this "
                         f"machine's CPU (no CUDA device): {', '.join(pending)}. It is meant for a GPU "
                         f"(docs/GPU.md); pass --allow-cpu-training to compute them here anyway (its training runs "
                         f"take hours to days on a CPU, and cost files measured here are the CPU's, not the GPU's)")


def take_spare(path, deadline: float, by_name: dict):
    """The config of the next run of the GPU lanes' queue that ends by `deadline` (lib.lanes.claim_spare), saying
    which; None when none fits. A queue that cannot be read ends the spare runs with a line saying why, not an
    error: the lane's own runs are done, and its exit status stays theirs."""
    from lib.lanes import claim_spare

    while True:
        try:
            taken = claim_spare(path, deadline)
        except (OSError, ValueError) as err:
            print(f"spare runs: stopped, the queue cannot be read ({err})")
            return None
        if taken is None:
            print(f"spare runs: none left that would end by the plan's end of the lanes "
                  f"({max(0.0, deadline - time.time()):.0f} s from now)")
            return None
        name, seconds = taken
        if name in by_name:
            print(f"spare run {name}: estimated {seconds:.0f} s, {deadline - time.time():.0f} s before the plan's "
                  f"end of the lanes")
            return by_name[name]
        print(f"spare runs: {name} is no experiment of these options, left out")


def cmd_run(args) -> int:
    """Train the selected experiments; finished results with the same config are reused (merge)."""
    stop_by = None if args.time_limit is None else time.perf_counter() + args.time_limit
    # Part 1 when asked for, or when nothing else is (--models with --costs names the costs' models)
    want_p1 = args.part1 or (args.models and not args.costs) or not (args.part2 or args.probe or args.slices
                                                                      or args.costs)
    if want_p1:  # before the data: a mistyped name should not be reported as missing data
        check_models("--models", args.models, PART1_MODELS, "Part 1 model")
    else:
        check_models("--models", args.models, MODEL_NAMES, "model")
        p1_only = " and ".join(o for o, v in (("--precision", args.precision), ("--num-epochs", args.num_epochs))
                               if v is not None)
        if p1_only:  # they would change nothing: say so rather than run the other parts as if they had
            verb = "change" if " and " in p1_only else "changes"
            print(f"error: {p1_only} {verb} only the Part 1 runs, and these options select none (Part 2, the probes, "
                  f"the slices and the cost files keep their protocol's settings): add --part1 to train Part 1 "
                  f"that way too, or leave out {p1_only}", file=sys.stderr)
            return 2
    source = canonical_source(args.data)
    dirs = output_dirs(args.profile, publish=args.publish or None)
    check_epochs(args.num_epochs)  # --num-epochs and --precision change the Part 1 runs only, as in `study`
    # Imported after the checks above (torch takes seconds to import; a typo is reported at once).
    from lib import bn_study
    from lib.experiments import bn_experiments
    from lib.part1 import configs as part1_configs
    from lib.train import train

    configs = (part1_configs(args.profile, source, args.models, args.seeds, args.num_epochs, args.precision)
               if want_p1 else [])
    if args.part2:
        configs += bn_experiments(args.profile, source)
    if (args.spare is None) != (args.spare_by is None):
        print("error: --spare and --spare-by go together (the lanes' queue and when the plan's lanes end)",
              file=sys.stderr)
        return 2
    by_name = {c.name: c for c in configs}
    if args.only:  # run in the order given (the GPU runner's plan is seed-major)
        unknown = [n for n in dict.fromkeys(args.only) if n not in by_name]
        if unknown:
            print(f"error: --only names no experiment of these options: {', '.join(unknown)}. Known here: "
                  f"{', '.join(by_name) or 'none'}. Part 1 names need their model in --models (default: all "
                  f"nine) and their seed in --seeds (e.g. --seeds 0 1 2), and --part1 beside --part2 or another "
                  f"part; BN protocol names need --part2.",
                  file=sys.stderr)
            return 2
        configs = [by_name[n] for n in dict.fromkeys(args.only)]
    if not args.allow_cpu_training:
        refuse_cpu_work(args, configs, source, dirs)
    t0 = time.perf_counter()

    def stopped(cfg, left=()) -> bool:
        """Train cfg and say how it ended (train() says when it reused a finished result); True when the time
        limit stopped it (then nothing more starts)."""
        r = train(cfg, dirs=dirs, force=args.force, progress=not args.quiet,
                  max_epochs_this_call=args.max_epochs_this_call, stop_by=stop_by)
        acc = r.get("test_acc")
        print(f"{cfg.name}: {r['status']}" + (f", test acc {100 * acc:.2f}%" if acc is not None else ""))
        if r["status"] == "incomplete" and r.get("stopped_by") == "time_limit":
            print(f"time limit reached after {r['epochs_done']} epoch(s) of {cfg.name}"
                  + (f"; not started: {' '.join(left)}" if left else ""))
            return True
        if r["status"] == "incomplete":  # --max-epochs-this-call: this run's share; the next run gets its own
            print(f"  stopped by --max-epochs-this-call {args.max_epochs_this_call} after epoch {r['epochs_done']} "
                  f"of {cfg.num_epochs}; a next call resumes it")
        return False

    for i, cfg in enumerate(configs):
        if stopped(cfg, [c.name for c in configs[i + 1:]]):
            return 0
    trained = len(configs)
    while args.spare is not None and (cfg := take_spare(args.spare, args.spare_by, by_name)) is not None:
        if not args.allow_cpu_training:
            refuse_cpu_work(args, [cfg], source, dirs)
        trained += 1
        if stopped(cfg):
            return 0
    done = ([f"{trained} training run(s) (reused ones included)"]
            if trained or not (args.probe or args.slices or args.costs) else [])
    if args.probe:  # both networks, with the documented lr fallback when VGG_A does not train
        for r in bn_study.run_probes(args.profile, source, dirs, force=args.force, progress=not args.quiet):
            print(f"probe {r['config']['model']}: done (lr {r['config']['lr']:g})")
        done.append("the probes")
    if args.slices:
        bn_study.run_slices(args.profile, source, dirs, force=args.force)
        print("loss slices: done")
        done.append("the loss slices")
    if args.costs:  # FLOPs, parameters, inference images/s: per architecture, no training needed
        from lib.part1 import compute_costs

        costs = compute_costs(dirs, args.models, force=args.force)
        for c in costs:
            print(f"cost {c['model']}: {c['flops'] / 1e6:,.1f} MFLOP/image, {c['infer_ips']:,.0f} images/s at batch "
                  f"{c['infer_batch']} on {c['device_name']}")
        done.append(f"{len(costs)} cost file(s)")
    print(f"{', '.join(done)} in {time.perf_counter() - t0:.0f} s; results in {dirs.results}")
    return 0


def cmd_study(args) -> int:
    """Execute the notebooks headless in order (papermill), then render the report."""
    import logging

    from lib.pipeline import StudyError, run_study, study_command

    check_epochs(args.num_epochs)
    check_models("--models", args.models, PART1_MODELS, "Part 1 model")
    check_models("--model", [args.model] if args.model else [], CANET_MODELS, "CANet variant")
    extra = {k: v for k, v in (("models", args.models), ("model", args.model), ("num_epochs", args.num_epochs),
                               ("precision", args.precision)) if v is not None}
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:  # a bar counts cells, and a training cell can hold it for minutes
        print("[study] one progress bar per notebook, counting its cells; a training cell may hold it for minutes "
              "(--verbose streams the notebooks' output instead)", flush=True)
    t0 = time.perf_counter()
    try:
        report = run_study(args.profile, data_source=args.data, publish=args.publish or None,
                           notebooks=args.notebooks, seeds=args.seeds, force=args.force, extra_params=extra,
                           log_output=args.verbose, progress_bar=not args.verbose,
                           command=study_command(args.profile, args.data, args.publish, args.notebooks, args.seeds,
                                                 extra, args.force, args.reuse_only),
                           allow_cpu_training=args.allow_cpu_training, reuse_only=args.reuse_only)
    except StudyError as err:
        print(f"study stopped: {err}", file=sys.stderr)
        return 1
    print(f"study done in {time.perf_counter() - t0:.0f} s; report: {report}")
    return 0


def note_other_data(rows, dirs, source: str) -> None:
    """Say so on stderr when experiments that `status` lists as missing have a result in the folder trained on
    other data (its `data_source`): a status asked for another `--data` (default: official) than the study's."""
    from collections import Counter

    from lib.config import same_data_source
    from lib.results import read_json

    found = Counter()
    for state, name, _ in rows:
        path = Path(dirs.results) / f"{name}.json"
        if state == "done" or not path.exists():
            continue
        try:
            other = read_json(path)["config"]["data_source"]
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if isinstance(other, str) and not same_data_source(other, source):
            found[other] += 1
    if found:
        sources = ", ".join(f"{n} on {s}" for s, n in found.most_common())
        print(f"note: {sum(found.values())} of these experiments have a result in {dirs.results} trained on other "
              f"data ({sources}), not counted for --data {source}: give --data {found.most_common(1)[0][0]} to see "
              f"that study", file=sys.stderr)


def note_published(args, dirs) -> None:
    """Say so on stderr when a smoke/quick command without --publish reads a results folder that holds no result
    while the committed one (results/<profile>/) does: the committed study is what a user usually means."""
    if args.publish or args.profile == "full" or any(Path(dirs.results).glob("*.json")):
        return
    published = output_dirs(args.profile, publish=True).results
    if any(Path(published).glob("*.json")):
        print(f"note: {dirs.results} holds no results of the {args.profile} profile; the committed ones are in "
              f"{published}: add --publish to use them", file=sys.stderr)


def cmd_report(args) -> int:
    """Render report.md from the result files of a profile (no training)."""
    from lib.report import published_profile, render_report

    dirs = output_dirs(args.profile, publish=args.publish or None)
    note_published(args, dirs)
    before = published_profile(dirs.report)
    print(f"report: {render_report(args.profile, dirs)}")
    if before not in (None, args.profile):  # the committed report.md of another profile: say how to get it back
        print(f"note: {dirs.report} was the {before} profile's report; `python -m lib report --profile {before}"
              f"{'' if before == 'full' else ' --publish'}` renders it again")
    return 0


def cmd_refresh(args) -> int:
    """Render README.md's speed tables and report.md again from the committed result files (no training)."""
    from lib.report import refresh

    for line in refresh():
        print(f"refresh: {line}")
    return 0


def cmd_status(args) -> int:
    """Print what of a profile's study is done, resumable or missing (nothing is computed)."""
    from lib.plan import estimate_check, format_estimate_check, format_remaining, remaining_estimate, study_status

    dirs = output_dirs(args.profile, publish=args.publish or None)
    note_published(args, dirs)
    check_epochs(args.num_epochs)
    rows = study_status(args.profile, canonical_source(args.data), dirs, args.seeds, args.precision, args.num_epochs)
    counts = {state: sum(r[0] == state for r in rows) for state in ("done", "partial", "damaged", "missing")}
    precision = (f", Part 1 precision {args.precision}" if args.precision else "") + (
        f", Part 1 epochs {args.num_epochs}" if args.num_epochs else "")
    seeds = " ".join(map(str, args.seeds))
    print(f"profile {args.profile}{precision}, data {canonical_source(args.data)}, seeds {seeds}, "
          f"in {dirs.results}: {counts['done']} of {len(rows)} done, {counts['partial']} partial, "
          + (f"{counts['damaged']} damaged, " if counts["damaged"] else "") + f"{counts['missing']} missing")
    for state, name, detail in rows:
        if args.all or state != "done":
            print(f"  {state:8} {name}{'  (' + detail + ')' if detail else ''}")
    note_other_data(rows, dirs, canonical_source(args.data))
    if args.profile == "full" and counts["done"] < len(rows):  # what is left, in GPU time, per committed GPU bench file
        for path in gpu_bench_files():
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            try:
                est = remaining_estimate(path, canonical_source(args.data), dirs, args.seeds, args.profile,
                                         precision=args.precision, num_epochs=args.num_epochs)
                checked = estimate_check(path, dirs, args.profile)  # how good its estimates were so far
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:  # the list above stands
                print(f"(no estimate of what is left from {shown}: it cannot be read as a bench file: "
                      f"{type(err).__name__}: {err})")
                continue
            print(format_remaining(est, shown))
            if checked:
                print(format_estimate_check(checked, shown))
    return 0


def gpu_bench_files() -> list[Path]:
    """The bench files of this checkout that are not a CPU's (lib.paths.gpu_bench_files)."""
    return paths.gpu_bench_files(REPO)


def cmd_bench(args) -> int:
    """Time naive vs fast epochs; print the table, the study estimate, a graph check or a plan for a time budget."""

    from lib import bench
    from lib.results import read_json
    from lib.train import COMPILE_ENV, resolve_device

    actions = ("models", "fast_only", "probe", "also_compiled", "also_step_graph", "also_step_graph_compiled",
               "check_graphs", "trace", "bookkeeping", "agreement",
               "concurrent", "graph_failures", "graph_failures_file", "compile_choice", "compile_choice_file",
               "table", "estimate", "plan")
    if not any(getattr(args, a) for a in actions):
        raise ValueError("bench: nothing to do: name what to time or print (e.g. --models, --fast-only, --table, "
                         "--estimate, --plan; `python -m lib bench --help` lists them all)")
    if args.step_graph_rows and not args.fast_only:
        raise ValueError("--step-graph-rows times the whole-step-graph rows of the --fast-only models: name them "
                         "with --fast-only")
    if args.step_graph_rows and args.compile:
        raise ValueError("--step-graph-rows times both rows of each model (around the eager and the compiled "
                         "model): leave out --compile")
    if args.lanes_startup and not (args.plan and args.lanes > 1):
        raise ValueError("--lanes-startup is the lanes' start-up in a plan's budget: it goes with --plan and "
                         "--lanes 2 or more")
    for option in ("models", "fast_only", "also_compiled", "also_step_graph", "also_step_graph_compiled",
                   "check_graphs", "trace", "agreement",
                   "concurrent", "bookkeeping"):  # before the data
        names = getattr(args, option)
        names = [names] if isinstance(names, str) else names
        check_models(f"--{option.replace('_', '-')}", names, MODEL_NAMES, "model")
    dev = resolve_device(args.device)
    path = Path(args.out) if args.out else bench.bench_path(dev)
    if path.exists():  # a folder or a file that is no bench file: said before anything is measured or read
        bench.load_bench(path)
    status = 0
    for model in args.check_graphs or ():  # exit status 3 if any model's check (new or recorded) failed
        for precision in args.check_precisions:
            key = bench.graph_check_key(model, precision)
            known = bench.graph_checks(path).get(key) if path.exists() else None
            if args.missing_only and bench.graph_check_as_now(known):
                check = known
                print(f"CUDA-graph check of {key}: recorded in {path} (--missing-only): ok={check['ok']}")
            else:
                check = bench.check_cuda_graphs(model, args.data, args.device, num_train=args.num_train,
                                                precision=precision)
                print(f"CUDA-graph check: {check}")
                if check["ok"] is not None:
                    bench.save_graph_check(check, path, dev)
            status = 3 if check["ok"] is False else status
    failures = " ".join(bench.graph_failures(path)) if path.exists() and (
        args.graph_failures or args.graph_failures_file) else ""
    if args.graph_failures:  # one line for the GPU runner: the models to train without CUDA graphs (maybe none)
        print(failures)
    if args.graph_failures_file:
        Path(args.graph_failures_file).write_text(failures + "\n")
    if (args.models or args.fast_only or args.probe or args.also_compiled or args.also_step_graph
            or args.also_step_graph_compiled):
        bench.run_benchmark(args.models or (), args.data, args.device, path, fast_only=args.fast_only or (),
                            probes=bench.BN_MODELS if args.probe else (), num_train=args.num_train,
                            num_val=args.num_val, num_workers=args.workers, missing_only=args.missing_only,
                            compile=args.compile, also_compiled=args.also_compiled or (),
                            also_step_graph=args.also_step_graph or (),
                            also_step_graph_compiled=args.also_step_graph_compiled or (),
                            step_graph_rows=args.step_graph_rows)
    if args.concurrent:  # each model alone and --lanes at once, in --lanes processes (lib.lanes)
        from lib.lanes import measure_concurrency

        measure_concurrency(args.concurrent, args.lanes, args.data, args.device, path, num_train=args.num_train,
                            num_val=args.num_val, missing_only=args.missing_only)
    recorded = (read_json(path).get("agreement", {}) if path.exists() else {}).get(args.agreement)
    if args.agreement and args.missing_only and recorded is not None and not bench.stale_revision(recorded):
        print(f"agreement of {args.agreement}: in {path} already (--missing-only)")
    elif args.agreement:  # naive vs fast accuracy over a few epochs of the recipe, per seed
        result = bench.agreement(args.agreement, args.data, args.device, epochs=args.epochs,
                                 seeds=args.seeds or [0, 1], num_train=args.num_train, num_val=args.num_val,
                                 num_workers=args.workers)
        bench.save_agreement(result, path, dev)
        print("\n".join(bench.agreement_lines({"agreement": {result["model"]: result}})))
    if args.trace:  # where a step's time goes: eager, CUDA-graphed, a CANet also graphed per path, the whole step
        # as one graph (on a CPU: eager only); recorded in the bench file, --missing-only skips variants recorded
        # with this torch, model revision and TRACE_VERSION
        traces = read_json(path).get("traces", {}) if path.exists() else {}
        for variant in bench.trace_variants(args.trace, dev):
            known = traces.get(bench.trace_key(args.trace, variant))
            if args.missing_only and bench.trace_as_now(known):
                print(f"trace of {args.trace} ({variant}): in {path} already (--missing-only)")
                continue
            graphs, merged, step_graph = bench.TRACE_VARIANTS[variant]
            t = bench.trace_steps(args.trace, args.data, args.device, cuda_graphs=graphs, merged=merged,
                                  step_graph=step_graph)
            print(bench.trace_line(t))
            bench.save_trace(t, variant, path, dev)
    for model in args.bookkeeping or ():  # where the per-epoch bookkeeping goes, part by part
        known = (read_json(path).get("bookkeeping", {}) if path.exists() else {}).get(model)
        if args.missing_only and bench.recorded_as_now(known) and known.get("parts_alone"):  # (else timed anew)
            print(f"bookkeeping of {model}: in {path} already (--missing-only)")
            continue
        record = bench.bookkeeping_parts(model, args.data, args.device)
        bench.save_bookkeeping(record, path, dev)
        print("[bench] " + bench.bookkeeping_lines({"bookkeeping": {model: record}})[0])
    # With --lanes N, as the runs will train: N at once (a variant measured to gain so counts its share).
    def choose(lanes: int) -> str:
        return " ".join(bench.compile_choice(read_json(path), lanes=lanes)) if path.exists() and (
            args.compile_choice or args.compile_choice_file) else ""

    def use(choice: str) -> None:
        Path(args.compile_choice_file).write_text(choice + "\n")
        os.environ[COMPILE_ENV] = choice  # for --plan below: the runs are planned as the runner trains them

    choice = choose(args.lanes)
    if args.compile_choice:  # one line for the GPU runner: the models to train torch.compile'd (maybe none)
        print(choice)
    if args.compile_choice_file:
        use(choice)
    if (args.table or args.estimate) and not path.exists():
        committed = " ".join(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in gpu_bench_files())
        raise FileNotFoundError(f"bench file {path} does not exist: measure into it first (--models, --fast-only), "
                                f"or name another with --out"
                                + (f" (this checkout's GPU measurements: --out {committed})" if committed else ""))
    if args.table:
        print(bench.bench_table(path))
    if args.estimate:
        print(bench.format_estimate(path, seeds=len(args.seeds or [0])))
        if args.lanes > 1:  # as lanes would run now (CIFAR10_MPS), and in each other state measured
            from lib.lanes import format_lanes_estimate, measured_states, mps_on

            for mps in dict.fromkeys([mps_on(), *measured_states(path, args.lanes)]):
                print(format_lanes_estimate(path, seeds=len(args.seeds or [0]), runs=args.lanes, mps=mps))
    if args.plan:
        from lib.plan import format_plan, plan_study

        margin = {} if args.margin is None else {"margin": args.margin}  # default: lib.plan.PLAN_MARGIN

        def plan_for(lanes: int, startup: float) -> dict:
            return plan_study(args.plan, args.data, args.budget, read_json(path) if path.exists() else None,
                              seeds=args.seeds or [0], profile=args.profile, lanes=lanes,
                              partial=not args.no_partial, lanes_startup_s=startup, **margin)

        plan = plan_for(args.lanes, args.lanes_startup)
        if plan.get("lanes_declined") and args.compile_choice_file and (alone := choose(1)) != choice:
            use(alone)  # its runs train one at a time: compiled as for one run at a time, and planned so
            plan = dict(plan_for(1, 0.0), lanes_declined=args.lanes, lanes_startup_s=args.lanes_startup)
        print(format_plan(plan))
    return status


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose own errors (an unknown option or choice, a bad number) end like the library's: one
    `error: ...` line naming the command's --help, exit status 2, instead of argparse's usage block and message."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def main(argv=None) -> int:
    """Entry point of `python -m lib`."""
    parser = Parser(prog="python -m lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train experiments (Part 1 comparison and/or the BN protocol)")
    _add_common(p)
    p.add_argument("--part1", action="store_true", help="the Part 1 comparison (default when nothing is chosen)")
    p.add_argument("--part2", action="store_true", help="the BN protocol runs (VGG-A +-BN at four lrs)")
    p.add_argument("--probe", action="store_true", help="the Santurkar et al. probe runs")
    p.add_argument("--slices", action="store_true", help="the filter-normalised 1-D loss slices (needs --part2 runs)")
    p.add_argument("--costs", action="store_true",
                   help="the Part 1 models' cost files (FLOPs, inference images/s; batch 1024 on a GPU), no training")
    p.add_argument("--models", nargs="+",
                   help=f"Part 1 models to run, or with --costs to measure (default: all nine: "
                        f"{' '.join(PART1_MODELS)})")
    p.add_argument("--seeds", nargs="+", type=seed_number, default=[0], help="Part 1 seeds (default: 0)")
    p.add_argument("--only", nargs="+", help="restrict to these experiment names (e.g. p1-CANet-s0)")
    p.add_argument("--num-epochs", type=int, default=None,
                   help="override the profile's Part 1 epochs (another configuration, as `study --num-epochs`)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    p.add_argument("--force", action="store_true", help="retrain even when a matching result exists")
    p.add_argument("--max-epochs-this-call", type=positive_int, default=None,
                   help="stop (resumably) after this many epochs per experiment")
    p.add_argument("--time-limit", type=number_above(0), default=None, metavar="SECONDS",
                   help="stop (resumably) before an epoch that would end later than SECONDS after the start "
                        "(judged by the epoch before it); the next run of the experiment resumes from there")
    p.add_argument("--spare", metavar="FILE",
                   help="after the runs, take more from this queue of the GPU runner's lanes (lines NAME:SECONDS, "
                        "shared by the lanes) while one ends by --spare-by (lib.lanes.claim_spare)")
    p.add_argument("--spare-by", type=float, metavar="EPOCH_SECONDS",
                   help="with --spare: when the plan's lanes end (seconds since the epoch, as `date +%%s`)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--allow-cpu-training", action="store_true",
                   help="let the full profile compute on a machine without CUDA (by default it names what it "
                        "would compute there and stops)")
    p.set_defaults(func=cmd_run)

    # scripts/main.sh names itself (STUDY_PROG_ENV), so that its --help and errors name the command a user typed
    p = sub.add_parser("study", help="execute the four notebooks headless in order, then render the report",
                       prog=os.environ.get(STUDY_PROG_ENV) or None)
    _add_common(p)
    p.add_argument("--notebooks", nargs="+", help="a subset, by number or name (default: 01 02 03 04)")
    p.add_argument("--seeds", nargs="+", type=seed_number, default=[0], help="Part 1 seeds (default: 0)")
    p.add_argument("--models", nargs="+",
                   help=f"Part 1 models of notebook 02 (default: all nine: {' '.join(PART1_MODELS)})")
    p.add_argument("--model", help="the CANet variant notebook 01 trains and 03 shows (default: CANet)")
    p.add_argument("--num-epochs", type=int, help="override the profile's Part 1 epochs (default: the profile's)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    p.add_argument("--force", action="store_true", help="retrain even when a matching result exists")
    p.add_argument("--verbose", action="store_true", help="stream the notebooks' output while they run")
    p.add_argument("--allow-cpu-training", action="store_true",
                   help="let the full profile train on a machine without CUDA (by default it stops before the "
                        "first notebook while an experiment is missing, naming them; once a GPU trained them all, "
                        "it renders the notebooks and the report)")
    p.add_argument("--reuse-only", action="store_true",
                   help="train nothing: stop before the first notebook, naming every experiment without a matching "
                        "result (to view committed results safely)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="render report.md from the existing result files of a profile")
    p.add_argument("--profile", default="smoke", choices=list(PROFILES),
                   help="whose results to render (default: smoke)")
    p.add_argument("--publish", action="store_true",
                   help="render the published smoke/quick results (results/<profile>/) into the committed report.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("refresh", help="render again what is rendered from the committed results: README.md's speed "
                                       "tables (results/bench/) and report.md, in the profile it was published from "
                                       "(after merging a GPU call's results; no training)")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("status", help="list what of a profile's study is done, resumable or missing "
                                      "(Part 1 runs, BN protocol, slices, probes, cost files); computes nothing")
    _add_common(p, publish="list a smoke/quick study's committed results (results/<profile>/) instead of build/"
                           "<profile>/ (full: always the committed ones)")
    p.add_argument("--seeds", nargs="+", type=seed_number, default=[0], help="Part 1 seeds (default: 0)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the Part 1 runs' precision, where the study was run with --precision (default: the recipe's)")
    p.add_argument("--num-epochs", type=int, default=None,
                   help="the Part 1 runs' epochs, where the study was run with --num-epochs (default: the profile's)")
    p.add_argument("--all", action="store_true", help="list the finished experiments too")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("bench", help="time the original's naive pipeline against lib.train's epoch on this device; "
                                     "estimate and plan the full study from the measurements")
    p.add_argument("--models", nargs="+", help="time naive and fast epochs of these models (e.g. CANet CANet_tiny)")
    p.add_argument("--fast-only", nargs="+", help="time only the fast epoch of these models (for the estimate)")
    p.add_argument("--probe", action="store_true", help="time the probe runs' steps (VGG_A, VGG_A_BN)")
    p.add_argument("--missing-only", action="store_true", help="skip what the bench file already has")
    p.add_argument("--compile", action="store_true",
                   help="time the torch.compile variant of the fast epoch (key <model>+compile) instead")
    p.add_argument("--data", default=None, help=f"data source as for `run` (default: ${SOURCE_ENV} or 'official')")
    p.add_argument("--device", default="auto", type=device_option,
                   help="'auto' (cuda when available), 'cuda', 'cuda:N' or 'cpu'")
    p.add_argument("--num-train", type=positive_int, default=None,
                   help="training images per epoch (default: all 45,000)")
    p.add_argument("--num-val", type=positive_int, default=None, help="validation images (default: all 5,000)")
    p.add_argument("--workers", type=whole_number(0), default=4,
                   help="DataLoader workers of the naive pipeline (default 4; 0: in the main process)")
    p.add_argument("--out", default=None, help="bench file (default: results/bench/<device-slug>.json)")
    p.add_argument("--check-graphs", nargs="+", metavar="MODEL",
                   help="compare CUDA-graphed and eager training steps of each MODEL (exit status 3 if they differ "
                        "for any; --missing-only reuses the checks recorded with this torch version)")
    p.add_argument("--trace", metavar="MODEL", help="profile a short epoch of MODEL's fast training steps, eager "
                                                    "and CUDA-graphed (a CANet also graphed with its blocks per "
                                                    "path), then with the whole step as one CUDA graph: ms per "
                                                    "step, kernel time, top operators")
    p.add_argument("--bookkeeping", nargs="+", metavar="MODEL",
                   help="time lib.train's per-epoch bookkeeping of each MODEL part by part (TensorBoard scalars and "
                        "histograms, weight histograms, best weights, the resumable checkpoint); no training")
    p.add_argument("--check-precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="precisions of --check-graphs (default: fp32, the strict one)")
    p.add_argument("--graph-failures", action="store_true",
                   help="print the models whose recorded graph check failed (the GPU runner trains them eagerly)")
    p.add_argument("--graph-failures-file", metavar="PATH",
                   help="write what --graph-failures prints to PATH, after this call's checks (the GPU runner "
                        "saves a process with it)")
    p.add_argument("--agreement", metavar="MODEL",
                   help="train MODEL's recipe for --epochs epochs with the naive pipeline and with lib.train, "
                        "once per --seeds seed, and compare their validation accuracy (saved in the bench file)")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs of --agreement (default 3)")
    p.add_argument("--also-compiled", nargs="+", metavar="MODEL",
                   help="also time these torch.compile'd, against the naive epoch of the same process")
    p.add_argument("--also-step-graph", nargs="+", metavar="MODEL",
                   help="also time these with the whole training step as one CUDA graph (an experiment: "
                        "lib/step_graph.py), against the naive epoch of the same process")
    p.add_argument("--also-step-graph-compiled", nargs="+", metavar="MODEL",
                   help="the same around the torch.compile'd model (mode 'default')")
    p.add_argument("--step-graph-rows", action="store_true",
                   help="with --fast-only: time each model's two whole-step-graph rows (around the eager and the "
                        "compiled model) instead of its plain one, fast epoch only: the rows the plan reads where "
                        "CIFAR10_STEP_GRAPH names the model (the GPU runner times them when it is set)")
    p.add_argument("--compile-choice", action="store_true",
                   help="print the models whose measured torch.compile variant makes a full run faster "
                        "(the GPU runner exports them as CIFAR10_COMPILE)")
    p.add_argument("--compile-choice-file", metavar="PATH",
                   help="write what --compile-choice prints to PATH; with --plan, the plan then assumes them "
                        "torch.compile'd (CIFAR10_COMPILE, as the GPU runner trains them)")
    p.add_argument("--concurrent", nargs="+", metavar="MODEL",
                   help="time each MODEL's fast epoch alone and with --lanes runs at once, in --lanes processes "
                        "(under MPS where CIFAR10_MPS=1 says the GPU runner started it; lib.lanes)")
    p.add_argument("--lanes", type=whole_number(1), default=1,
                   help="training processes at once on the GPU: runs at once for --concurrent; --plan spreads "
                        "the training runs over this many lanes, --estimate adds the study's time so, "
                        "--compile-choice(-file) counts each variant's share of the GPU in them (under MPS where "
                        "CIFAR10_MPS=1; default 1: one run at a time)")
    p.add_argument("--table", action="store_true", help="print the bench file as a markdown table")
    p.add_argument("--estimate", action="store_true", help="print the full study's estimated GPU time")
    p.add_argument("--plan", nargs="+", metavar="SUBSET",
                   help="print the unfinished experiments of SUBSET (all, part1, part2, probe, costs or names) that fit "
                        "--budget seconds (scripts/gpu_full_study.sh runs the plan)")
    p.add_argument("--budget", type=number_above(0), default=480.0, help="seconds for --plan (default 480)")
    p.add_argument("--margin", type=number_above(0),
                   help="--plan multiplies estimates by this (default: lib.plan.PLAN_MARGIN, 1.2)")
    p.add_argument("--lanes-startup", type=number_above(0, inclusive=True), default=0.0, metavar="SECONDS",
                   help="--plan with --lanes: seconds the lanes need before they start (the GPU runner starts "
                        "MPS only for a plan with lanes); such a plan gets the budget less them, and where that "
                        "leaves fewer than two lanes, the plan is the one without lanes for the whole budget")
    p.add_argument("--no-partial", action="store_true",
                   help="--plan only whole runs: no run longer than --budget that a next call would resume (the "
                        "runner's later rounds in a call, planned with the time its first round left)")
    p.add_argument("--seeds", nargs="+", type=seed_number, default=None,
                   help="Part 1 seeds for --plan and --estimate (default: 0); seeds of --agreement (default: 0 1)")
    p.add_argument("--profile", default="full", choices=list(PROFILES),
                   help="whose published results --plan checks (default: full; others for dry runs)")
    p.set_defaults(func=cmd_bench)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, so the message names its --help
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    for name, value in vars(args).items():  # a model or seed named twice is one run, not two
        if isinstance(value, list):
            setattr(args, name, list(dict.fromkeys(value)))
    try:
        if any(name.startswith("CIFAR10_") for name in os.environ):  # (the check imports torch: seconds)
            from lib.train import check_execution_env

            check_execution_env()  # a nonsense CIFAR10_* setting is refused before anything runs
        return args.func(args)
    except INPUT_ERRORS as err:
        if not input_error(err) or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        # an OSError's str() starts with "[Errno 2]"; say what and which file instead
        message = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        # Results and checkpoints are written whole (temp file + rename), so nothing finished is lost here.
        again = ("the same command starts the interrupted run over; without --force an interrupted training run "
                 "goes on from the last epoch it saved (an interrupted probe run's finished result is reused), and "
                 "every finished result is reused, those not yet retrained too" if getattr(args, "force", False)
                 else "the same command goes on from there (a training run from the last epoch it saved, a probe run "
                      "from the last step it saved)")
        print(f"\ninterrupted: finished experiments are kept; {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
