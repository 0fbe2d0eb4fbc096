"""Planning the GPU calls: the study as jobs, what is done, and the unfinished jobs that fit a time budget.

    plan_study(["all"], "shared", budget_s=480, seeds=[0, 1, 2], lanes=3)   # what a call of
                                                    # scripts/gpu_full_study.sh trains (python -m lib bench --plan)
    study_status("full", "shared")                  # done / partial / missing per experiment (python -m lib status)
    remaining_estimate("results/bench/nvidia-h200.json", "shared")   # GPU minutes the rest still needs
    estimate_check("results/bench/nvidia-h200.json")   # the finished runs against their estimates

Estimates come from a bench file's measured epochs (lib.bench: run_seconds of the variant the runner trains,
entry_in_use), with lib.lanes' slowdowns where several runs train at once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

from lib.bench import as_runner_compiles, entry_in_use, load_bench, run_seconds
from lib.config import PART1_MODELS, PROFILES, TrainConfig
from lib.data import canonical_source
from lib.experiments import bn_experiments
from lib.part1 import configs as part1_configs, cost_path, is_gpu_cost
from lib.paths import OutputDirs, output_dirs
from lib.results import read_json, rerun_pending, reusable_result, reusable_run
from lib.train import kept_checkpoint

# Planning a time budget: estimates are multiplied by PLAN_MARGIN, and every process started for a plan
# line (python start, imports, TensorBoard, data from the cache) is allowed STEP_STARTUP_S.
PLAN_MARGIN = 1.2
STEP_STARTUP_S = 20.0
# The two 1-D loss slices (51 evaluations of 2,000 images each): an allowance, not a measurement.
SLICES_ALLOWANCE_S = 30.0
# The nine models' cost files on the GPU (FLOP count, inference at batch 1024): an allowance, not a measurement.
COSTS_ALLOWANCE_S = 60.0


class Job(NamedTuple):
    """A unit of the study, planned to finish within one call (checkpoints do not survive between machines;
    a single run longer than a call is the exception, see plan_study)."""

    kind: str  # 'train' | 'bn-slices' (the lr-1e-3 BN pair and the slices, which need their checkpoints) | 'probe'
    #          | 'costs' (a Part 1 model's cost file, lib.part1.compute_costs)
    names: tuple[str, ...]  # experiment names (for 'costs': cost-<model>)
    seconds: float | None  # estimated seconds of what is left (None: nothing measured to estimate from)
    done: bool
    force: bool = False  # retrain although results exist (their checkpoints are needed and gone)
    epochs_done: int = 0  # a 'train' job's epochs in its resumable checkpoint here (lib.train.resume_epoch)
    model: str | None = None  # a 'train' job's model (its slowdown in a lane: lib.lanes); a 'costs' job's
    damaged: str | None = None  # a checkpoint here of a 'train' job or the pair that cannot be read: why (not planned)


def source_name(data_source: str | None) -> str:
    """The data source as configs record it (lib.data.canonical_source), 'shared' as it is: that name needs no copy
    on this machine, as the plan and the status only read result files (so a report counts the same here and on a
    machine without the workplace's copy)."""
    return "shared" if data_source == "shared" else canonical_source(data_source)


def study_jobs(bench, data_source: str | None = None, dirs: OutputDirs | None = None,
               seeds: Sequence[int] = (0,), profile: str = "full", precision: str | None = None,
               num_epochs: int | None = None) -> list[Job]:
    """The study of `profile` as jobs in running order, each with its estimate (from the bench's `full`
    epoch times) and whether it is done in `dirs` (default: the profile's published folders). `precision` and
    `num_epochs` override the Part 1 runs' (lib.part1.configs)."""
    from lib import bn_study

    source = source_name(data_source)
    dirs = dirs or output_dirs(profile, publish=True)
    entries = load_bench(bench).get("entries", {}) if bench is not None else {}
    full = PROFILES[profile]

    def est(model: str, num_epochs: int) -> float | None:
        e = entry_in_use(entries, model)
        return run_seconds(e, num_epochs) if e is not None else None

    def finished(cfg: TrainConfig) -> bool:
        return reusable_run(cfg, dirs) is not None

    def train_job(cfg: TrainConfig, num_epochs: int) -> Job:
        if finished(cfg):
            return Job("train", (cfg.name,), est(cfg.model, num_epochs), True, model=cfg.model)
        done, damaged = resumable_epochs(cfg, dirs)  # a run stopped by a call's time limit, on this machine
        return Job("train", (cfg.name,), est(cfg.model, num_epochs - done), False, epochs_done=done, model=cfg.model,
                   damaged=damaged)

    # Seed-major: the first seed of every Part 1 model, the BN protocol and the probes come before the extra
    # seeds, so that a partly run study is complete for one seed before it gains error bars.
    p1 = [train_job(c, c.num_epochs)
          for c in part1_configs(profile, source, seeds=seeds, num_epochs=num_epochs, precision=precision)]
    jobs = p1[:len(PART1_MODELS)]  # the first seed (part1_experiments is seed-major)
    bn = bn_experiments(profile, source)
    jobs += [train_job(c, full.bn_epochs) for c in bn if c.lr != 1e-3]
    pair = [c for c in bn if c.lr == 1e-3]
    pair_est = [est(c.model, full.bn_epochs) for c in pair]
    slices_done = bn_study.slices_done(profile, source, dirs, pair[0].lr, pair[0].seed)
    pair_finished = {c.name: finished(c) for c in pair}
    pair_done = all(pair_finished.values())
    damaged = [f"{c.name}: {why}" for c in pair
               if not pair_finished[c.name] and (why := resumable_epochs(c, dirs)[1])]
    jobs.append(Job("bn-slices", tuple(c.name for c in pair),
                    None if None in pair_est else sum(pair_est) + SLICES_ALLOWANCE_S,
                    pair_done and slices_done, force=pair_done and not slices_done,
                    damaged="; ".join(damaged) or None))
    configs = bn_study.probe_configs(profile, source)
    probe_done = all(bn_study.probe_done(c, dirs) for c in configs)
    probe_est = [entries.get(f"probe-{c.model}", {}).get("seconds_per_step") for c in configs]
    jobs.append(Job("probe", tuple(c.name for c in configs),
                    None if None in probe_est else sum(s * c.num_steps for s, c in zip(probe_est, configs)),
                    probe_done))
    # One job per model (an even share of the allowance), so that the cost files fill what a call has left
    # a few at a time (one process for all those taken: 'costs MODEL...'). Done: the full profile's with a GPU
    # measurement, another profile's (a CPU dry run's) with any (as study_status says).
    jobs += [Job("costs", (f"cost-{m}",), COSTS_ALLOWANCE_S / len(PART1_MODELS), cost_done(profile, dirs, m), model=m)
             for m in PART1_MODELS]
    return jobs + p1[len(PART1_MODELS):]


def cost_done(profile: str, dirs: OutputDirs, model: str) -> bool:
    """Whether `model`'s cost file in dirs counts for `profile`: the full profile's must be a GPU measurement
    (gpu_cost_file); the other profiles measure theirs in seconds on any device."""
    return gpu_cost_file(dirs, model) if profile == "full" else cost_path(dirs, model).exists()


def resumable_epochs(cfg: TrainConfig, dirs: OutputDirs) -> tuple[int, str | None]:
    """(epochs in cfg's resumable checkpoint in dirs, None), or (0, why) when that checkpoint cannot be read
    (lib.train.read_checkpoint's error, which says what to do): status lists it, the plan leaves it out, rather
    than either stopping at it."""
    from lib.train import resume_epoch

    try:
        return resume_epoch(cfg, dirs), None
    except ValueError as err:
        return 0, str(err)


def gpu_cost_file(dirs: OutputDirs, model: str) -> bool:
    """Whether `model`'s cost file in dirs is a GPU measurement (lib.part1.compute_costs at the GPU batch)."""
    path = cost_path(dirs, model)
    return path.exists() and is_gpu_cost(read_json(path))


def select_jobs(jobs: list[Job], tokens: Sequence[str]) -> list[Job]:
    """Jobs named by tokens: 'all', 'part1' (with the cost files), 'part2' (the BN protocol and the slices), 'probe',
    'costs', or experiment names."""
    chosen = []
    for job in jobs:
        for token in tokens:
            if (token == "all" or (token == "part1" and job.names[0].startswith("p1-"))
                    or (token == "part2" and job.kind in ("train", "bn-slices") and job.names[0].startswith("bn-"))
                    or (token == "probe" and job.kind == "probe") or (token in ("part1", "costs") and job.kind == "costs")
                    or token in job.names):
                chosen.append(job)
                break
    known = {"all", "part1", "part2", "probe", "costs", "bench"} | {n for j in jobs for n in j.names}
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise ValueError(f"unknown study subset(s) {unknown}: use all, part1, part2, probe, costs or experiment names "
                         f"such as {jobs[0].names[0]}")
    return chosen


def plan_study(tokens: Sequence[str], data_source: str | None = None, budget_s: float = 480.0, bench=None,
               dirs: OutputDirs | None = None, seeds: Sequence[int] = (0,), profile: str = "full",
               margin: float = PLAN_MARGIN, lanes: int = 1, partial: bool = True,
               lanes_startup_s: float = 0.0) -> dict:
    """Which unfinished jobs of the chosen subset fit `budget_s` (first fit in running order, estimates x
    `margin`, STEP_STARTUP_S per process). Returns {'lines': [...], 'taken', 'skipped', 'done', 'seconds',
    'budget_s', 'partial', 'lanes', 'slowdowns', 'margin', 'order', 'spare'} (and 'study_order_seconds' where the
    order is not the study's).

    Lines (what scripts/gpu_full_study.sh runs, in order): 'train NAME...' (python -m lib run --only),
    'train-force NAME...' (the same with --force), 'slices', 'probe', 'costs MODEL...' (their cost files).

    lanes > 1: the training runs (not the lr-1e-3 pair, which the slices follow) of models that train faster
    together than one after another (measured slowdown at `lanes` runs at once < lanes: lib.lanes.slowdown) are
    spread over `lanes` processes that train at once on the GPU, each run's estimate times that slowdown, each
    into an empty lane while there is one, then into a lane that holds a run of its model where it fits without
    making the plan longer (one process: the later run reuses the compiled code and cuDNN's autotuning; its
    estimate still counts the one-off), else into the least loaded lane (_lane_for). The plan then starts with one 'lane NAME...' line per lane used (the runner
    starts them together and waits for all), then, with two lanes or more, a line 'spare SECONDS NAME:COST...':
    the skipped runs of models that gain whose estimate in a lane (x slowdown x margin, COST) fits the longest
    lane's time (SECONDS, from the lanes' start) after a process start, which a lane that ends earlier may take
    while one fits before then (lib.lanes.claim_spare; 'spare' in the plan). The other jobs, runs of models
    without a measured gain among them, follow one after another. The call's time is the longest lane plus the
    rest. Without measurements the plan is the one of lanes=1.

    With lanes, the jobs are also fitted in a second order (a run resumable here first, then per seed block, the
    first seed's with the BN protocol, probes and costs before the other seeds', the runs of models that gain
    before the rest, each group in study order; a run that gains then trains in a lane or waits), and the plan that
    covers more of the first seed's block in single-run seconds, then more in all (covered_seconds), is kept
    ('order': 'study' or 'gain-first'): in study order, a run that fits only alone can take the time that several
    runs at once would have used; in the other, a first-seed run that waits for a lane can give its call to lanes
    of an extra seed's runs.

    A single run longer than the whole budget (CANet_pro's may be) cannot finish in one call. When it is the
    first unfinished job of the subset it is planned alone, as `partial`: the runner's time limit stops it
    resumably (lib.train.train's stop_by), and a next call on the same, still warm machine resumes it (its
    estimate then counts only the epochs left). Elsewhere in the order it is skipped, so that it does not
    take the leftovers of a call that has other work; always with partial=False (a plan for the time a call has
    left after its first plan ran: the runner's later rounds).

    lanes_startup_s: seconds that lanes need before they can start and runs one at a time do not (the runner
    starts NVIDIA's MPS daemon only for a plan with two lanes or more). Such a plan is fitted to budget_s less
    them ('lanes_startup_s' in it); where that plan has fewer than two lanes, the plan is the one without lanes
    (lanes=1) for the whole budget_s, with 'lanes_declined' = `lanes`.
    """
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, got {lanes}")
    if lanes_startup_s < 0:
        raise ValueError(f"lanes_startup_s must be at least 0, got {lanes_startup_s}")
    args = (tokens, data_source, bench, dirs, seeds, profile, margin, partial)
    if lanes == 1 or not lanes_startup_s:
        return _plan(*args, budget_s, lanes)
    with_lanes = _plan(*args, budget_s - lanes_startup_s, lanes)
    if lanes_used(with_lanes) >= 2:
        return dict(with_lanes, lanes_startup_s=lanes_startup_s)
    return dict(_plan(*args, budget_s, 1), lanes_declined=lanes, lanes_startup_s=lanes_startup_s)


def lanes_used(plan: dict) -> int:
    """How many lanes (processes at once) a plan's lines start: its 'lane' lines (one alone trains alone)."""
    return sum(1 for line in plan["lines"] if line.startswith("lane "))


def _plan(tokens: Sequence[str], data_source: str | None, bench, dirs: OutputDirs | None, seeds: Sequence[int],
          profile: str, margin: float, partial: bool, budget_s: float, lanes: int) -> dict:
    """plan_study for a budget that the lanes, if any, have from the start."""
    from lib.lanes import slowdown

    jobs = select_jobs(study_jobs(bench, data_source, dirs, seeds, profile), tokens)
    factors = {j.model: slowdown(bench, j.model, lanes) for j in jobs if j.kind == "train"}  # 1 with one lane
    plan = dict(_fit_jobs(jobs, factors, budget_s, margin, lanes, partial), order="study")
    if lanes > 1:
        # First fit in study order can leave lanes empty: a run that only fits alone takes the time that
        # several runs at once would have used. So also fit a run resumable here first, then per seed block
        # (the first seed's runs, the BN protocol, the probes and costs; then the other seeds) the runs that gain
        # first, and keep the plan that covers more single-run seconds: the first seed's first (a study complete
        # for one seed is a whole report, its sanity bars among it; an extra seed's lanes bought with a first-seed
        # run left for a later call are not), then all. Once the first seed is done, only all seconds decide. A
        # partial plan (a run longer than the call, resumed by the next) covers what the call can train of it.
        gains = lambda j: j.kind == "train" and factors[j.model] < lanes
        reordered = sorted(jobs, key=lambda j: (not j.epochs_done, extra_seed_job(j, seeds), not gains(j)))  # stable
        other = _fit_jobs(reordered, factors, budget_s, margin, lanes, partial=False, gainers_alone=False)
        worth = lambda p: (covered_seconds(p, seeds), covered_seconds(p))
        if worth(other) > worth(plan):
            plan = dict(other, order="gain-first", study_order_seconds=covered_seconds(plan),
                        alternative=("study order", *worth(plan)), first_seed_seconds=worth(other)[0])
        elif covered_seconds(other) > covered_seconds(plan):  # kept for the first seed: the plan says so
            plan = dict(plan, alternative=("gain-first", *worth(other)), first_seed_seconds=worth(plan)[0])
    return plan


def extra_seed_job(job: Job, seeds: Sequence[int]) -> bool:
    """Whether `job` is a Part 1 run of a seed after the first of `seeds` (the other jobs are the first seed's
    block: its Part 1 runs, the BN protocol, the probes and the cost files)."""
    return bool(seeds) and job.names[0].startswith("p1-") and not job.names[0].endswith(f"-s{seeds[0]}")


def covered_seconds(plan: dict, first_seed_of: Sequence[int] | None = None) -> float:
    """The single-run seconds of the jobs a plan takes (their estimates alone, without margin or slowdown); of a
    partial plan's run, what its budget holds (budget / margin). With `first_seed_of` (the study's seeds), only
    those of the first seed's block (extra_seed_job)."""
    if (job := plan.get("partial")) is not None:
        counts = first_seed_of is None or not extra_seed_job(job, first_seed_of)
        return min(job.seconds, plan["budget_s"] / plan["margin"]) if counts else 0.0
    # fsum: the same jobs taken in another order sum to the same number, so that rounding never decides between
    # two plans (plan_study compares them)
    return math.fsum(j.seconds for j in plan["taken"] if first_seed_of is None or not extra_seed_job(j, first_seed_of))


def _fit_jobs(jobs: Sequence[Job], factors: dict, budget_s: float, margin: float, lanes: int,
              partial: bool, gainers_alone: bool = True) -> dict:
    """plan_study's first fit of `jobs` in the order given; `factors`: each trained model's slowdown at `lanes`
    at once (lanes: no gain). gainers_alone=False: a run of a model that gains trains in a lane or not at all
    (not alone, where it would take the time of several)."""
    taken, skipped, done = [], [], []
    loads, lane_jobs = [0.0] * lanes, [[] for _ in range(lanes)]  # lanes > 1: seconds and jobs per lane
    rest = 0.0  # seconds of the jobs that run one after another
    processes, slowdowns = set(), {}
    for job in jobs:
        if job.done:
            done.append(job)
            continue
        if job.damaged:
            skipped.append((job, job.damaged))
            continue
        if job.seconds is None:
            skipped.append((job, "no bench measurement to estimate it from"))
            continue
        # A job that needs a process kind not yet started also pays that process's start-up.
        kinds = {"train": {"train"}, "probe": {"probe"}, "costs": {"costs"},
                 "bn-slices": {"train-force" if job.force else "train", "slices"}}[job.kind]
        # Alone after the lanes, or (a measured gain: together faster than one after another) in the least
        # loaded lane, where it fits.
        cost = job.seconds * margin + STEP_STARTUP_S * len(kinds - processes)
        left = budget_s - rest - max(loads)
        factor = factors[job.model] if job.kind == "train" else float(lanes)
        lane = _lane_for(job, loads, lane_jobs, budget_s - rest, job.seconds * factor * margin)
        lane_cost = job.seconds * factor * margin + (0.0 if lane_jobs[lane] else STEP_STARTUP_S)
        laned = factor < lanes and lane_cost <= budget_s - rest - loads[lane]
        if not laned and factor < lanes and not gainers_alone and not job.epochs_done:
            skipped.append((job, f"estimated {lane_cost:.0f} s in a lane > {budget_s - rest - loads[lane]:.0f} s "
                                 f"left in the least loaded one"))
            continue
        if not laned and cost > left:
            too_long = job.seconds * margin + STEP_STARTUP_S * len(kinds) > budget_s
            # Before it: done, unmeasured, or the costs (which then wait for another call).
            first_in_line = (all(j.kind == "costs" for j in taken)
                             and all(j.seconds is None or j.kind == "costs" for j, _ in skipped))
            if partial and too_long and job.kind == "train" and first_in_line:  # the call is its own
                return {"lines": [f"train {job.names[0]}"], "taken": [job], "skipped": [], "done": done,
                        "seconds": float(budget_s), "budget_s": budget_s, "partial": job, "lanes": 1,
                        "slowdowns": {}, "margin": margin, "spare": [], "lanes_end_s": 0.0}
            why = f"estimated {cost:.0f} s > {left:.0f} s left"
            if too_long and partial:
                why += (" (longer than the whole budget: it runs over two calls once it is the first "
                        "unfinished job, see docs/GPU.md)")
            skipped.append((job, why))
            continue
        if laned:
            loads[lane] += lane_cost
            lane_jobs[lane].append(job)
            slowdowns[job.model] = factor
        else:
            rest += cost
            processes |= kinds
        taken.append(job)
    in_lanes = {id(j) for js in lane_jobs for j in js}
    # Spare runs: a lane's runs usually end before the plan's longest lane (estimates with a margin), and until
    # then nothing else starts. Runs of models that gain, left out for want of time, go into a queue that such a
    # lane takes from while one fits before the plan's end of the lanes (lib.lanes.claim_spare), so the rest of the
    # plan keeps its time. Only beside two lanes or more (one lane trains alone), and only runs that fit after a
    # lane's process start.
    spare = []
    if sum(1 for js in lane_jobs if js) > 1:
        spare = [(j, j.seconds * factors[j.model] * margin) for j, _ in skipped
                 if j.kind == "train" and j.seconds is not None and not j.damaged and factors[j.model] < lanes]
        spare = [(j, s) for j, s in spare if s <= max(loads) - STEP_STARTUP_S]
    train = [n for j in taken if not j.force and j.kind in ("train", "bn-slices") and id(j) not in in_lanes
             for n in j.names]
    forced = [n for j in taken if j.force for n in j.names]
    lines = [f"lane {' '.join(n for j in js for n in j.names)}" for js in lane_jobs if js]
    if spare:
        lines.append(f"spare {max(loads):.0f} " + " ".join(f"{j.names[0]}:{s:.0f}" for j, s in spare))
    lines += ([f"train {' '.join(train)}"] if train else []) + ([f"train-force {' '.join(forced)}"] if forced else [])
    lines += ["slices"] if any(j.kind == "bn-slices" for j in taken) else []
    lines += ["probe"] if any(j.kind == "probe" for j in taken) else []
    costs = [j.model for j in taken if j.kind == "costs"]
    lines += [f"costs {' '.join(costs)}"] if costs else []
    return {"lines": lines, "taken": taken, "skipped": skipped, "done": done, "seconds": max(loads) + rest,
            "budget_s": budget_s, "partial": None, "lanes": lanes, "slowdowns": slowdowns, "margin": margin,
            "spare": spare, "lanes_end_s": max(loads)}


def _lane_for(job: Job, loads: list[float], lane_jobs: list[list[Job]], room: float, seconds: float) -> int:
    """The lane for `job` (estimated `seconds` there; `room`: the budget the lanes have): an empty one while there
    is one (no lane idles while another trains two runs); then one that already holds a run of the same model,
    where it fits and does not make the plan longer (the lane is, or ties with, the least loaded one, or stays
    within the longest): a lane is one process, and a model's later runs in the process reuse its compiled code
    and cuDNN's autotuning (lib.train.step_model_for's earlier_in_process), which the estimates do not count;
    else the least loaded one."""
    least = min(range(len(loads)), key=loads.__getitem__)
    if all(lane_jobs) and job.model is not None:
        same = [i for i, js in enumerate(lane_jobs) if any(j.model == job.model for j in js)
                and seconds <= room - loads[i] and (loads[i] == loads[least] or loads[i] + seconds <= max(loads))]
        if same:
            return min(same, key=loads.__getitem__)
    return least


def remaining_estimate(bench, data_source: str | None = None, dirs: OutputDirs | None = None,
                       seeds: Sequence[int] = (0,), profile: str = "full", lanes: int = 3,
                       precision: str | None = None, num_epochs: int | None = None) -> dict:
    """GPU time the unfinished part of the study still needs on the bench's device, from its measurements, the
    models compiled as the GPU runner compiles them (as_runner_compiles: for one run at a time, and for `lanes` at
    once for 'lanes_seconds'): {'device', 'jobs' (unfinished),
    'seconds' (their estimates one after another, as plan_study's jobs: with its allowances for the slices and
    the cost files, without its margin and process start-ups), 'unknown' (unfinished jobs without a
    measurement), 'lanes', 'mps', 'lanes_seconds' (with `lanes` runs at once, as lib.lanes.lanes_estimate
    splits the study: the training runs of models measured to gain at their slowdown, evenly over the lanes, the
    rest alone; a lower bound; None where nothing was measured at once)}. The MPS state is the bench file's:
    under MPS where it holds measurements so (the runner then starts MPS), else time-sliced. `precision` and
    `num_epochs` are the Part 1 overrides of study_jobs."""
    from lib.lanes import measured_states, seconds_at_once, slowdown

    data = load_bench(bench)
    states = measured_states(data, lanes)  # none at one lane
    mps = bool(states) and states[-1]  # MPS where it was measured so (the runner starts it then)

    def unfinished(runs: int) -> tuple[list[Job], list[tuple[float, float]]]:
        """The unfinished jobs and their (seconds alone, slowdown at `runs` at once), the models compiled as the
        runner compiles them with `runs` lanes: 'train' jobs are the runs a plan may put into lanes (the lr-1e-3
        pair is a 'bn-slices' job: alone)."""
        with as_runner_compiles(data, runs, mps):  # the estimates and slowdowns of the variants the runner trains
            jobs = [j for j in study_jobs(data, data_source, dirs, seeds, profile, precision, num_epochs)
                    if not j.done]
            return jobs, [(j.seconds, slowdown(data, j.model, runs, mps) if j.kind == "train" else float(runs))
                          for j in jobs if j.seconds is not None]

    jobs, known = unfinished(1)  # one after another
    lanes_seconds = seconds_at_once(unfinished(lanes)[1], lanes) if states else None
    return {"device": data.get("device"), "jobs": jobs, "seconds": sum(s for s, _ in known),
            "unknown": [n for j in jobs if j.seconds is None for n in j.names], "lanes": lanes, "mps": mps,
            "lanes_seconds": lanes_seconds}


def estimate_check(bench, dirs: OutputDirs | None = None, profile: str = "full") -> list[dict]:
    """The estimates the plan makes against the finished training runs in `dirs` (default: the profile's published
    folder) that trained on the bench's device: per run {'name', 'estimate' (run_seconds of the variant it trained,
    fast_path's compile or step graph or neither, over the epochs of the call that finished it, less the one-off
    setup that precedes the clock, times the measured slowdown where it shared the GPU: shared_gpu), 'actual'
    (wall_seconds_this_call:
    its first epoch to its result written), 'ratio' (actual / estimate)}. Runs whose variant or slowdown was not
    measured are left out. The plan multiplies the estimates by PLAN_MARGIN and adds STEP_STARTUP_S per process:
    ratios well below 1 / PLAN_MARGIN say the margin leaves time unused."""
    from lib.bench import compile_key, step_graph_key
    from lib.lanes import concurrency_key, concurrency_records, record_slowdown

    data = load_bench(bench)
    entries, records = data.get("entries", {}), concurrency_records(data)
    dirs = dirs or output_dirs(profile, publish=True)
    out = []
    for path in sorted(Path(dirs.results).glob("*.json")):
        r = read_json(path)
        if (not isinstance(r, dict) or r.get("device") != data.get("device") or "history" not in r
                or r.get("wall_seconds_this_call") is None):
            continue  # another device's, not a training run's (steps, weights, costs), or from before the field
        fast = r.get("fast_path") or {}
        key = (step_graph_key(r["model"], bool(fast.get("compile"))) if fast.get("step_graph")
               else compile_key(r["model"], fast.get("compile_mode") or "default") if fast.get("compile")
               else r["model"])  # the bench entry of the variant it trained
        entry = entries.get(key)
        if entry is None or entry.get("fast_seconds") is None:
            continue
        slowdown, shared = 1.0, r.get("shared_gpu")
        if shared:
            record = records.get(concurrency_key(key, shared["lanes"], shared["mps"]))
            if not record or record.get("slowdown") is None:
                continue
            slowdown = record_slowdown(record)
        epochs = r.get("epochs_this_call", len(r["history"]))  # results before the field trained in one call
        estimate = (run_seconds(entry, epochs) - entry["setup_seconds"]) * slowdown
        out.append({"name": r["name"], "estimate": estimate, "actual": r["wall_seconds_this_call"],
                    "ratio": r["wall_seconds_this_call"] / estimate})
    return out


def format_estimate_check(rows: list[dict], path: Path | str) -> str:
    """estimate_check as a line for `python -m lib status`."""
    import statistics

    ratios = [r["ratio"] for r in rows]
    runs = ", ".join(f"{r['name']} {r['actual']:.0f} s of {r['estimate']:.0f} s" for r in rows)
    return (f"finished runs against the plan's estimates from {path} (before its margin x{PLAN_MARGIN:g} and "
            f"{STEP_STARTUP_S:.0f} s per process): actual / estimate {min(ratios):.2f}-{max(ratios):.2f}, median "
            f"{statistics.median(ratios):.2f}, over {len(rows)} run(s), each its wall time from the first epoch to its "
            f"result, then the estimate (`--all` lists the training time alone): {runs}")


def format_remaining(est: dict, path: Path | str) -> str:
    """remaining_estimate as a line for `python -m lib status`."""
    line = (f"left on {est['device']} (estimates from {path}): {len(est['jobs'])} job(s), about "
            f"{est['seconds'] / 60:.1f} min one run after another")
    if est["lanes_seconds"] is not None:
        how = "under MPS" if est["mps"] else "time-sliced"
        line += f", at least {est['lanes_seconds'] / 60:.1f} min with {est['lanes']} runs at once {how}"
    if est["unknown"]:
        line += f"; not estimated (no measurement): {', '.join(est['unknown'])}"
    return line


def done_detail(path: Path) -> str:
    """What a finished training run's result says in one line: its test accuracy, the device and how long it
    trained (and whether beside other runs), e.g. 'test 88.48%, NVIDIA H200, 214 s training, 3 lanes'."""
    try:
        r = read_json(path)
    except (OSError, ValueError):
        return ""
    if not isinstance(r, dict):
        return ""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    shared = r.get("shared_gpu") if isinstance(r.get("shared_gpu"), dict) else {}
    parts = [f"test {100 * r['test_acc']:.2f}%" if number(r.get("test_acc")) else "",
             r["device"] if isinstance(r.get("device"), str) else "",
             f"{r['train_seconds']:.0f} s training" if number(r.get("train_seconds")) else "",
             f"{shared['lanes']} lanes" if number(shared.get("lanes")) and shared["lanes"] > 1 else ""]
    return ", ".join(p for p in parts if p)


def study_status(profile: str, data_source: str | None = None, dirs: OutputDirs | None = None,
                 seeds: Sequence[int] = (0,), precision: str | None = None,
                 num_epochs: int | None = None, details: bool = True) -> list[tuple[str, str, str]]:
    """What of the study of `profile` is in `dirs`, in running order: (state, name, detail) per experiment, state
    'done' (a result matching this code's config), 'partial' (a resumable checkpoint here: `lib run` goes on from
    it), 'damaged' (a checkpoint here that cannot be read; the detail says what to do) or 'missing'. For `python -m
    lib status`, to see what a split run still needs. `precision` and `num_epochs` override the Part 1 runs'
    (lib.part1.configs). details=False: the details of finished and missing runs are left empty (done_detail and
    unusable_result read their result files again). A finished run whose re-run with force stopped part-way is
    'partial' (lib.results.rerun_pending: `lib run` goes on with the re-run)."""
    from lib import bn_study

    source = source_name(data_source)
    dirs = dirs or output_dirs(profile, publish=True)

    configs = {c.name: c for c in part1_configs(profile, source, seeds=seeds, num_epochs=num_epochs,
                                                 precision=precision) + bn_experiments(profile, source)}

    def run_state(name: str, done: bool, epochs_done: int, damaged: str | None = None) -> tuple[str, str, str]:
        if done:
            return "done", name, done_detail(Path(dirs.results) / f"{name}.json") if details else ""
        if damaged:
            return "damaged", name, damaged
        if epochs_done:
            return "partial", name, (f"{epochs_done} of {configs[name].num_epochs} epochs in its checkpoint here"
                                     + (", a re-run with --force: lib run goes on with it and replaces the finished "
                                        "result" if rerun_pending(configs[name], dirs) else ""))
        if kept := kept_checkpoint(configs[name], dirs):  # `lib run` with these options stops at it
            return "missing", name, f"{kept}: give those options to go on with it, or --force to start over"
        return "missing", name, unusable_result(Path(dirs.results) / f"{name}.json", configs[name]) if details else ""

    out = []
    for job in study_jobs(None, source, dirs, seeds, profile, precision, num_epochs):
        if job.kind == "train":  # the job already says (results and checkpoints are not read again)
            out.append(run_state(job.names[0], job.done, job.epochs_done, job.damaged))
        elif job.kind == "bn-slices":  # the lr-1e-3 pair (one job for both, judged per run), then the slices
            for name in job.names:
                cfg = configs[name]
                done = reusable_run(cfg, dirs) is not None
                out.append(run_state(name, done, *((0, None) if done else resumable_epochs(cfg, dirs))))
            out.append(("done" if job.done else "missing", "loss slices",
                        "they need the pair's best checkpoints (retrained when gone)" if job.force else ""))
        elif job.kind == "probe":  # done at its lr, or at the fallback lr both networks moved to
            for c in bn_study.probe_configs(profile, source):
                done = bn_study.probe_done(c, dirs)
                steps, damaged = (0, None) if done else bn_study.probe_resumable_steps(c, dirs)
                out.append(("done", c.name, "") if done else ("damaged", c.name, damaged) if damaged else
                           ("partial", c.name, f"{steps} of {c.num_steps} steps in its checkpoint here") if steps else
                           ("missing", c.name, ""))
        else:  # costs: the full profile wants a GPU measurement; other profiles measure them in seconds
            for name in job.names:
                model = name[len("cost-"):]
                if cost_done(profile, dirs, model):
                    out.append(("done", name, ""))
                elif cost_path(dirs, model).exists():
                    out.append(("missing", name, "measured on a CPU; the full profile's is the GPU's"))
                else:
                    out.append(("missing", name, ""))
    return out


def unusable_result(path: Path, cfg: TrainConfig) -> str:
    """Why a result file at `path` does not count for `cfg` ('' where there is none): it cannot be read (lib run
    trains the run again and replaces it), it is of another data source, epochs or precision (lib.train's
    overridden_result: kept unless --force; `status` says which data), its per-step series beside it is missing or
    damaged (lib.results.reusable_run; retrained), or it is of an older config (replaced)."""
    from lib.train import overridden_result

    if not path.exists():
        return ""
    try:
        config = read_json(path)["config"]
        TrainConfig.from_dict(config)
    except (OSError, ValueError, TypeError, KeyError):
        return "its result file cannot be read as one: lib run trains it again and replaces the file"
    if changed := overridden_result(path, cfg):
        return f"its result here was trained otherwise, {', '.join(changed)}: lib run keeps it unless --force"
    if reusable_result(path, cfg.to_dict(), TrainConfig) is not None:  # so reusable_run wants its per-step series
        return (f"its per-step series ({cfg.name}.steps.json) is missing or cannot be read: lib run trains it again "
                f"and replaces both files")
    return "its result file is of another config (older code or recipe): lib run trains it again and replaces it"


def format_plan(plan: dict) -> str:
    """The plan as the lines the GPU script executes, with '#' comments on what was left out and why."""
    out = [f"# plan: {len(plan['taken'])} job(s), estimated {plan['seconds']:.0f} s of {plan['budget_s']:.0f} s"]
    if plan.get("lanes", 1) > 1:
        from lib.lanes import mps_on

        factors = ", ".join(f"{m} x{f:.2f}" for m, f in plan["slowdowns"].items())
        out.append(f"# lanes: up to {plan['lanes']} training processes at once, "
                   f"{'under MPS' if mps_on() else 'time-sliced (no MPS)'}; each run's estimate times its "
                   f"model's measured slowdown: {factors or 'none planned'}; runs of models without a measured "
                   f"gain at {plan['lanes']} at once train alone, after the lanes"
                   + (f"; the budget less {plan['lanes_startup_s']:.0f} s to start the lanes"
                      if plan.get("lanes_startup_s") else ""))
    elif plan.get("lanes_declined"):
        out.append(f"# lanes: the plan for up to {plan['lanes_declined']} at once (for the budget less "
                   f"{plan['lanes_startup_s']:.0f} s to start them) has fewer than two: one run at a time, for the "
                   f"whole budget, and nothing started for lanes")
    if (alternative := plan.get("alternative")) is not None:
        other, first, seconds = alternative  # (order, first-seed seconds, all seconds)
        why = (f"gain-first (a run resumable here, then per seed block the runs that gain at {plan['lanes']} at "
               f"once)" if plan["order"] == "gain-first" else "study (the first seed's block first)")
        out.append(f"# order: {why}, {covered_seconds(plan):.0f} s of single-run estimates "
                   f"({plan['first_seed_seconds']:.0f} s of them the first seed's block) against {seconds:.0f} s "
                   f"({first:.0f} s) {'in ' if other == 'study order' else ''}{other}")
    if (job := plan.get("partial")) is not None:
        out.append(f"# partial {job.names[0]}: about {job.seconds:.0f} s left to train, more than this call; it stops "
                   f"resumably at the time limit, and a call within 30 s on this warm machine resumes it (a fresh "
                   f"machine starts it over)")
    out += [f"# {n} resumes after epoch {j.epochs_done}" for j in plan["taken"] for n in j.names if j.epochs_done]
    out += plan["lines"]
    if plan.get("spare"):
        out.append(f"# spare: a lane whose runs end early takes the first of these that fits before the longest lane "
                   f"ends ({plan['lanes_end_s']:.0f} s after they start); their estimates in a lane "
                   f"(x slowdown x margin): " + ", ".join(f"{j.names[0]} {s:.0f} s" for j, s in plan["spare"]))
    out += [f"# skipped {' '.join(j.names)}: {why}" for j, why in plan["skipped"]]
    if plan["done"]:
        out.append(f"# already done: {' '.join(n for j in plan['done'] for n in j.names)}")
    return "\n".join(out)
