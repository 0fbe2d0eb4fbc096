"""Seed statistics and the model comparison: summaries, Welch tests, verdicts, the table, the Pareto front.

Decision rule used throughout (issue 6): model A is called *better* than model B only when
Welch's unequal-variance t-test on their per-seed test accuracies is significant at `alpha`
(two-sided, default 0.05) and A's mean is higher. A non-significant difference is reported as a
*tie*: not shown to differ with this many seeds, which is not a proof that they are equal (with three seeds
a side only differences of a few times the seeds' spread are detected). With fewer than two seeds on either
side the spread cannot be estimated, so the comparison is *undetermined*: one run each, as in the original
report, cannot rank two models; so is a comparison of two models whose seeds all agree (no spread to judge
a difference by). The tests are not corrected for their number; `holm` says which verdicts survive Holm's
correction, and the report says so beside them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

VERDICTS = ("better", "worse", "tied", "undetermined")
EQUAL_TOLERANCE = 1e-9  # means (or sample variances) closer than this are equal: float round-off, not a difference


def _as_finite_array(values: Iterable[float], what: str) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or inf ({x.tolist()}): drop diverged runs before summarising")
    return x


def summarize(values: Iterable[float]) -> dict:
    """Mean, sample std (ddof=1), count and t-based 95% confidence half-width of `values`.

    With a single value the spread cannot be estimated: `std` and `ci95` are NaN (not 0, which
    would wrongly claim a perfectly reproducible result).
    """
    x = _as_finite_array(values, "values")
    n = len(x)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "n": 1, "ci95": math.nan}
    std = float(x.std(ddof=1))
    # Half-width of the 95% interval of the mean: t_{0.975, n-1} * s / sqrt(n).
    ci95 = float(sps.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "ci95": ci95}


def welch_test(a: Iterable[float], b: Iterable[float]) -> dict:
    """Welch's unequal-variance two-sided t-test of mean(a) vs mean(b): dict(t, p, df).

    With fewer than two values on a side, t, p and df are NaN (no variance estimate). When both
    samples have zero variance the test degenerates: equal means give t=0, p=1; different means
    give t=+-inf, p=0 (the outcomes are exactly reproducible, so any difference is real).
    """
    a = _as_finite_array(a, "a")
    b = _as_finite_array(b, "b")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return {"t": math.nan, "p": math.nan, "df": math.nan}
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb  # squared standard errors of the two means
    diff = float(a.mean() - b.mean())
    if va + vb == 0.0:
        if diff == 0.0:
            return {"t": 0.0, "p": 1.0, "df": math.nan}
        return {"t": math.copysign(math.inf, diff), "p": 0.0, "df": math.nan}
    # Welch-Satterthwaite degrees of freedom (scipy < 1.11 does not return them).
    df = float((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)))
    with warnings.catch_warnings():
        if min(va, vb) == 0.0:  # one side's values all equal: exact, not the cancellation scipy warns of
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        res = sps.ttest_ind(a, b, equal_var=False)
    return {"t": float(res.statistic), "p": float(res.pvalue), "df": df}


@dataclass(frozen=True)
class Verdict:
    """Outcome of compare(a, b): verdict in VERDICTS, Welch p-value, mean(a) - mean(b), and why."""

    verdict: str
    p: float
    diff: float
    reason: str


def compare(a: Iterable[float], b: Iterable[float], alpha: float = 0.05) -> Verdict:
    """Decide whether sample `a` is better, worse, tied with, or undecidable against sample `b`.

    'better'/'worse': Welch p < alpha and the mean difference has that sign; 'tied': p >= alpha, or means equal
    within EQUAL_TOLERANCE; 'undetermined': fewer than 2 values on a side, or no spread on either side (every
    value of each side the same, within EQUAL_TOLERANCE), where the test has no variance to judge by. Higher is
    better.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    a = _as_finite_array(a, "a")
    b = _as_finite_array(b, "b")
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"compare needs at least one value per side, got {len(a)} and {len(b)}")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Verdict("undetermined", math.nan, diff,
                       f"{len(a)} vs {len(b)} values: at least 2 per side are needed to estimate the spread")
    if abs(diff) <= EQUAL_TOLERANCE:
        return Verdict("tied", 1.0, diff, "the means are equal")
    if max(a.var(ddof=1), b.var(ddof=1)) <= EQUAL_TOLERANCE:
        return Verdict("undetermined", math.nan, diff,
                       "every seed of each side has the same value: no spread to judge the difference by")
    p = welch_test(a, b)["p"]
    if p < alpha:
        verdict = "better" if diff > 0 else "worse"
        reason = f"Welch p={p:.3g} < {alpha} with {len(a)} vs {len(b)} values"
    else:
        verdict = "tied"
        reason = f"Welch p={p:.3g} >= {alpha}: not shown to differ with {len(a)} vs {len(b)} values"
    return Verdict(verdict, p, diff, reason)


# Columns of comparison_table, in order (accuracies in percent).
TABLE_COLUMNS = ("model", "params", "n_seeds", "seeds", "test_acc_mean", "test_acc_std", "test_acc_ci95",
                 "test_accs", "n_diverged", "flops", "epoch_seconds", "run_epoch_seconds", "train_ips", "infer_ips",
                 "peak_mem_mb")

_REQUIRED_KEYS = ("model", "seed", "test_acc", "num_params", "status")


def _cost_values(runs: list[dict], key: str) -> list[float]:
    """Non-missing values of cost[key] over `runs`."""
    out = []
    for r in runs:
        v = (r.get("cost") or {}).get(key)
        if v is not None and np.isfinite(v):
            out.append(float(v))
    return out


def _train_ips(runs: list[dict], epoch_secs: list[float]) -> float:
    """Training images per second of a model's row: the runs' training images per epoch (cost['train_images'],
    when they agree) over the row's epoch time (the median over all their epochs), so that the two columns tell
    the same story; else the median of the runs' own cost['train_ips']."""
    images = set(_cost_values(runs, "train_images"))
    if len(images) == 1 and epoch_secs and np.median(epoch_secs) > 0:
        return images.pop() / float(np.median(epoch_secs))
    return _median_or_nan(_cost_values(runs, "train_ips"))


def _median_or_nan(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def comparison_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per model from Part 1 result dicts: params, seeds, test accuracy mean/std (%), cost columns.

    Runs whose status is 'diverged' are excluded from every statistic and counted in `n_diverged`
    (a model whose runs all diverged keeps a row with n_seeds=0 and NaN accuracy). `test_accs`
    lists the per-seed accuracies (%) in the order of `seeds`, for compare(). Cost columns come from
    the optional per-run 'cost' dict: flops (the first value; it is a property of the model),
    train_ips (training images per epoch over epoch_seconds; see _train_ips), infer_ips (median over runs), peak_mem_mb (max over runs); `epoch_seconds` is the
    median of history[*]['seconds'] over all epochs of all kept runs (the median ignores a slow first
    epoch), `run_epoch_seconds` [(seed, that run's own median)] for the kept runs with timed epochs, which shows
    when the machine's load, not the model, set the times. Missing values are NaN. Rows are sorted by
    parameter count.
    """
    by_model: dict[str, list[dict]] = {}
    for r in results:
        missing = [k for k in _REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"result {r.get('name', '?')!r} lacks keys {missing}: is it a Part 1 result from lib.train?")
        if r["status"] not in ("ok", "diverged"):
            raise ValueError(f"result {r.get('name', '?')!r} has status {r['status']!r}; expected 'ok' or 'diverged'")
        by_model.setdefault(r["model"], []).append(r)

    rows = []
    for model, runs in by_model.items():
        params = {int(r["num_params"]) for r in runs}
        if len(params) != 1:
            raise ValueError(f"results for {model} disagree on num_params {sorted(params)}: "
                             "they come from different code versions; remove the stale result files")
        seeds = [int(r["seed"]) for r in runs]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"model {model} has several results for seed(s) {dup}: "
                             "pass the results of one profile and data source only")
        ok = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: int(r["seed"]))
        for r in ok:
            if not 0.0 <= float(r["test_acc"]) <= 1.0:
                raise ValueError(f"{model} seed {r['seed']}: test_acc={r['test_acc']} is not a fraction in [0, 1]")
        accs = [100.0 * float(r["test_acc"]) for r in ok]
        s = summarize(accs) if accs else {"mean": math.nan, "std": math.nan, "ci95": math.nan}
        epoch_secs = [float(h["seconds"]) for r in ok for h in r.get("history", []) if h.get("seconds") is not None]
        flops = _cost_values(ok, "flops")
        peak = _cost_values(ok, "peak_mem_mb")
        rows.append({
            "model": model,
            "params": params.pop(),
            "n_seeds": len(ok),
            "seeds": [int(r["seed"]) for r in ok],
            "test_acc_mean": s["mean"],
            "test_acc_std": s["std"],
            "test_acc_ci95": s["ci95"],
            "test_accs": accs,
            "n_diverged": len(runs) - len(ok),
            "flops": flops[0] if flops else math.nan,
            "epoch_seconds": _median_or_nan(epoch_secs),
            "run_epoch_seconds": [(int(r["seed"]), float(np.median(t))) for r in ok
                                  if (t := [float(h["seconds"]) for h in r.get("history", [])
                                            if h.get("seconds") is not None])],
            "train_ips": _train_ips(ok, epoch_secs),
            "infer_ips": _median_or_nan(_cost_values(ok, "infer_ips")),
            "peak_mem_mb": max(peak) if peak else math.nan,
        })
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.sort_values(["params", "model"], kind="stable").reset_index(drop=True)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979) of `pvalues`, in their order: the i-th smallest p times
    (m - i + 1), made non-decreasing in that order and capped at 1; a verdict significant at alpha survives the
    correction for the m tests where its adjusted p is below alpha. NaN values (undetermined comparisons) are no
    tests: they stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m, running = len(order), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def _fmt_p(p: float) -> str:
    """'p<0.001', else three significant digits, so that a p on either side of a threshold never prints as it."""
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def _seed_count(row) -> str:
    """'3' seeds of a comparison_table row, with its diverged runs: '2 (+1 diverged)'."""
    n_div = int(row.get("n_diverged", 0) or 0)
    return f"{row['n_seeds']}" + (f" (+{n_div} diverged)" if n_div else "")


def _fmt_acc(row) -> str:
    if row["n_seeds"] >= 2:
        return f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}%"
    return f"{row['test_acc_mean']:.2f}%"


def comparisons(table: pd.DataFrame, reference: str = "CANet",
                alpha: float = 0.05) -> list[tuple[pd.Series, pd.Series, Verdict | None]]:
    """(reference row, other row, compare(reference, other)) for every other model in `table`, in table order;
    the verdict is None where either side has no successful run."""
    models = list(table["model"])
    if reference not in models:
        raise ValueError(f"reference model {reference!r} is not in the table; models present: {models}")
    ref = table[table["model"] == reference].iloc[0]
    return [(ref, row, compare(ref["test_accs"], row["test_accs"], alpha=alpha)
             if ref["n_seeds"] and row["n_seeds"] else None)
            for _, row in table.iterrows() if row["model"] != reference]


def ranking_sentences(table: pd.DataFrame, reference: str = "CANet", alpha: float = 0.05) -> list[str]:
    """One plain sentence per other model in `table`, comparing it with `reference` via compare().

    Wording follows the verdict: "X is better than Y (...)", "X and Y are tied (...)", or
    "... cannot be decided from one seed" (fewer than 2 seeds on a side); never more than the test supports.
    """
    out = []
    for ref, row, v in comparisons(table, reference, alpha):
        name = row["model"]
        if v is None:
            empty = reference if ref["n_seeds"] == 0 else name
            out.append(f"{reference} and {name} cannot be compared: {empty} has no successful run.")
            continue
        first, second = (row, ref) if v.verdict == "worse" else (ref, row)  # a winner's numbers come first
        ctx = f"{_fmt_acc(first)} vs {_fmt_acc(second)}, {_seed_count(first)} vs {_seed_count(second)} seeds"
        if v.verdict == "better":
            out.append(f"{reference} is better than {name} ({ctx}; Welch {_fmt_p(v.p)}).")
        elif v.verdict == "worse":
            out.append(f"{name} is better than {reference} ({ctx}; Welch {_fmt_p(v.p)}).")
        elif v.verdict == "tied":
            why = "equal means" if abs(v.diff) <= EQUAL_TOLERANCE else "not significant"
            out.append(f"{reference} and {name} are tied (difference {v.diff:+.2f} points, {why}; {ctx}; "
                       f"Welch {_fmt_p(v.p)}).")
        elif min(ref["n_seeds"], row["n_seeds"]) < 2:
            out.append(f"{reference} vs {name} cannot be decided from one seed (difference {v.diff:+.2f} points; "
                       f"{ctx}; at least 2 seeds per model are needed).")
        else:
            out.append(f"{reference} vs {name} cannot be decided: the seeds of each agree exactly, so there is no "
                       f"spread to judge the difference by (difference {v.diff:+.2f} points; {ctx}).")
    return out


def holm_sentence(table: pd.DataFrame, reference: str = "CANet", alpha: float = 0.05) -> str:
    """One sentence on the ranking's tests taken together: how many were made, and which of its better/worse
    verdicts stay significant under Holm's correction for their number ('' with fewer than two tests)."""
    compared = [(row["model"], v) for _, row, v in comparisons(table, reference, alpha)
                if v is not None and math.isfinite(v.p)]
    if len(compared) < 2:
        return ""
    adjusted = holm([v.p for _, v in compared])
    decided = [(name, q) for (name, v), q in zip(compared, adjusted) if v.verdict in ("better", "worse")]
    head = (f"These are {len(compared)} Welch tests, each judged at p < {alpha:g} on its own (not corrected for "
            f"their number)")
    if not decided:
        return f"{head}; none found a difference."
    lost = [f"{reference} vs {name}, adjusted {_fmt_p(q)}" for name, q in decided if not q < alpha]
    kept = len(decided) - len(lost)
    tail = f" (not: {'; '.join(lost)})" if lost else ""
    return (f"{head}; with Holm's correction for the {len(compared)}, {kept} of the {len(decided)} differences "
            f"called significant stay so{tail}.")


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """Mask of Pareto-optimal points when minimising x (cost) and maximising y (accuracy).

    A point is on the front unless another point is at least as good in both and strictly better
    in one. Points with a NaN coordinate are never on the front and dominate nothing.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"xs and ys must be flat and of equal length, got shapes {x.shape} and {y.shape}")
    valid = np.isfinite(x) & np.isfinite(y)
    front = []
    for i in range(len(x)):
        if not valid[i]:
            front.append(False)
            continue
        no_worse = valid & (x <= x[i]) & (y >= y[i])
        strictly = (x < x[i]) | (y > y[i])
        front.append(not bool(np.any(no_worse & strictly)))
    return front
