"""Seed statistics: summaries, Welch test, verdicts, the comparison table, ranking sentences, Pareto front."""
import math

import pytest
from scipy import stats as sps

from lib.stats import (_fmt_p, compare, comparison_table, comparisons, holm, holm_sentence, pareto_front,
                       ranking_sentences, summarize, welch_test)


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(1.0)  # sample std: sqrt(((1-2)^2 + 0 + (3-2)^2) / 2)
    # t_{0.975, 2} = 4.302653 (table value); half-width = t * s / sqrt(3)
    assert s["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)


def test_summarize_single_value_has_no_spread():
    s = summarize([0.9])
    assert s["n"] == 1 and s["mean"] == 0.9
    assert math.isnan(s["std"]) and math.isnan(s["ci95"])


def test_summarize_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_welch_matches_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    # By hand: means 2.5 and 6; sample variances 5/3 and 10; squared standard errors 5/12 and 2.
    se2a, se2b = 5 / 12, 2.0
    t = (2.5 - 6.0) / math.sqrt(se2a + se2b)
    df = (se2a + se2b) ** 2 / (se2a**2 / 3 + se2b**2 / 4)
    p = 2 * sps.t.sf(abs(t), df)
    r = welch_test(a, b)
    assert r["t"] == pytest.approx(t)  # -2.2514...
    assert r["t"] == pytest.approx(-2.25136, abs=1e-4)
    assert r["df"] == pytest.approx(df)  # 5.52...
    assert r["p"] == pytest.approx(p)
    assert 0.05 < r["p"] < 0.1


def test_welch_small_samples_and_zero_variance():
    r = welch_test([1.0], [2.0, 3.0])
    assert math.isnan(r["t"]) and math.isnan(r["p"]) and math.isnan(r["df"])
    assert welch_test([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    r = welch_test([2.0, 2.0], [1.0, 1.0])
    assert r["p"] == 0.0 and r["t"] == math.inf


def test_compare_verdicts():
    better = compare([93.0, 93.1, 92.9], [90.0, 90.1, 89.9])
    assert better.verdict == "better" and better.p < 0.05 and better.diff == pytest.approx(3.0)
    worse = compare([90.0, 90.1, 89.9], [93.0, 93.1, 92.9])
    assert worse.verdict == "worse" and worse.diff == pytest.approx(-3.0)
    assert compare([93.0, 93.1, 92.9], [90.0, 90.1, 89.9], alpha=better.p).verdict == "tied"  # p < alpha, strictly
    assert compare([93.0, 93.1, 92.9], [90.0, 90.1, 89.9], alpha=better.p * 1.001).verdict == "better"
    tied = compare([93.0, 92.0, 94.0], [93.1, 92.1, 93.5])
    assert tied.verdict == "tied" and tied.p >= 0.05
    und = compare([93.5], [90.0, 91.0])
    assert und.verdict == "undetermined" and math.isnan(und.p) and und.diff == pytest.approx(3.0)
    assert "2 per side" in und.reason
    with pytest.raises(ValueError, match="alpha"):
        compare([1, 2], [3, 4], alpha=1.5)


def test_compare_does_not_rank_round_off_or_seeds_without_spread():
    # Means equal but for float round-off (0.1 * 3 * 100 is 30.000000000000004): tied, not 'better' with p=0.
    v = compare([0.1 * 3 * 100] * 3, [30.0] * 3)
    assert v.verdict == "tied" and v.p == 1.0 and v.reason == "the means are equal"
    # Every seed of each side the same, the means apart: the test has no spread to judge by.
    v = compare([50.0, 50.0], [51.0, 51.0])
    assert v.verdict == "undetermined" and math.isnan(v.p) and "no spread" in v.reason
    assert compare([50.0, 50.0], [51.0, 52.0]).verdict in ("worse", "tied")  # one side spreads: Welch decides


def test_holm_adjusts_as_by_hand():
    # Sorted 0.01, 0.02, 0.04 (m = 3): 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04 (kept non-decreasing).
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # Monotone: 4 x 0.01 = 0.04, then 3 x 0.011 = 0.033 is raised to 0.04; capped at 1.
    assert holm([0.01, 0.011, 0.5, 0.6]) == pytest.approx([0.04, 0.04, 1.0, 1.0])
    out = holm([0.02, float("nan"), 0.03])  # NaN: no test, not counted in m
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []


def test_p_values_print_on_their_side_of_the_threshold():
    assert _fmt_p(0.0496) == "p=0.0496" and _fmt_p(0.0504) == "p=0.0504" and _fmt_p(0.0004) == "p<0.001"
    assert _fmt_p(0.51293) == "p=0.513"


def test_pareto_front_small_set():
    # (cost, accuracy): B dominates A; C is cheapest; D is best; E is dominated by D; F has NaN.
    xs = [2.0, 1.5, 1.0, 3.0, 4.0, float("nan")]
    ys = [80.0, 85.0, 70.0, 90.0, 89.0, 99.0]
    assert pareto_front(xs, ys) == [False, True, True, True, False, False]
    assert pareto_front([1.0, 1.0], [5.0, 5.0]) == [True, True]  # duplicates do not dominate each other
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1.0, 2.0], [1.0])


def _result(model, seed, acc, params, status="ok", seconds=(5.0, 3.0, 3.0), cost=None):
    """A fabricated Part 1 result dict (test-only) with the keys comparison_table reads."""
    r = {"name": f"{model}_s{seed}", "model": model, "seed": seed, "test_acc": acc, "num_params": params,
         "best_val_acc": None if acc is None else acc + 0.02, "train_seconds": sum(seconds), "status": status,
         "history": [{"epoch": i, "seconds": s} for i, s in enumerate(seconds)], "per_class_acc": [acc] * 10}
    if cost is not None:
        r["cost"] = cost
    return r


@pytest.fixture
def results():
    big = {"flops": 2e9, "infer_ips": 1000.0, "peak_mem_mb": 500.0, "train_ips": 300.0}
    return [
        _result("Big", 0, 0.930, 2_000_000, cost=big),
        _result("Big", 1, 0.931, 2_000_000, cost={**big, "peak_mem_mb": 600.0, "infer_ips": 1200.0}),
        _result("Big", 2, 0.929, 2_000_000, seconds=(4.0, 2.0, 2.0), cost=big),
        _result("Big", 3, float("nan"), 2_000_000, status="diverged"),
        _result("Small", 0, 0.900, 100_000),
        _result("Small", 1, 0.901, 100_000),
        _result("Small", 2, 0.899, 100_000),
        _result("Mid", 0, 0.928, 500_000),
        _result("Mid", 1, 0.933, 500_000),
        _result("Single", 0, 0.95, 900_000),
    ]


def test_training_images_per_second_agree_with_the_epoch_time_column():
    # Seed 0's epochs are slow (a loaded machine), seed 1's fast: the runs' own numbers (50 and 500 images/s)
    # have the median 275, which the row's epoch time (the median over all six epochs, 140 s) does not explain.
    runs = [_result("M", 0, 0.5, 1000, seconds=(200.0, 200.0, 200.0), cost={"train_images": 10_000, "train_ips": 50.0}),
            _result("M", 1, 0.5, 1000, seconds=(20.0, 20.0, 80.0), cost={"train_images": 10_000, "train_ips": 500.0})]
    row = comparison_table(runs).iloc[0]
    assert row["epoch_seconds"] == pytest.approx(140.0)  # median of 20, 20, 80, 200, 200, 200
    assert row["run_epoch_seconds"] == [(0, 200.0), (1, 20.0)]  # (seed, that run's own median)
    assert row["train_ips"] == pytest.approx(10_000 / 140.0)
    # Without the image count (older cost dicts), the runs' own numbers: their median.
    runs = [dict(r, cost={"train_ips": r["cost"]["train_ips"]}) for r in runs]
    assert comparison_table(runs).iloc[0]["train_ips"] == pytest.approx(275.0)


def test_comparison_table_groups_and_sorts(results):
    t = comparison_table(results)
    assert list(t["model"]) == ["Small", "Mid", "Single", "Big"]  # sorted by params
    big = t[t["model"] == "Big"].iloc[0]
    assert big["n_seeds"] == 3 and big["n_diverged"] == 1 and big["seeds"] == [0, 1, 2]
    assert big["test_acc_mean"] == pytest.approx(93.0)  # percent; the diverged run is excluded
    assert big["test_acc_std"] == pytest.approx(0.1)
    assert big["test_accs"] == pytest.approx([93.0, 93.1, 92.9])
    assert big["flops"] == 2e9 and big["peak_mem_mb"] == 600.0
    assert big["infer_ips"] == 1000.0 and big["train_ips"] == 300.0
    assert big["epoch_seconds"] == pytest.approx(3.0)  # median of 5,3,3,4,2,2 -> 3
    small = t[t["model"] == "Small"].iloc[0]
    assert small["n_diverged"] == 0 and math.isnan(small["flops"]) and math.isnan(small["infer_ips"])
    single = t[t["model"] == "Single"].iloc[0]
    assert single["n_seeds"] == 1 and math.isnan(single["test_acc_std"])


def test_comparison_table_all_diverged_keeps_a_row():
    t = comparison_table([_result("X", 0, None, 10, status="diverged")])
    assert t.iloc[0]["n_seeds"] == 0 and t.iloc[0]["n_diverged"] == 1 and math.isnan(t.iloc[0]["test_acc_mean"])


def test_comparison_table_rejects_bad_input(results):
    with pytest.raises(ValueError, match="several results for seed"):
        comparison_table(results + [_result("Small", 0, 0.9, 100_000)])
    with pytest.raises(ValueError, match="disagree on num_params"):
        comparison_table(results + [_result("Small", 7, 0.9, 123)])
    with pytest.raises(ValueError, match="fraction"):
        comparison_table([_result("Small", 0, 90.0, 100_000)])
    bad = _result("Small", 0, 0.9, 100_000)
    del bad["test_acc"]
    with pytest.raises(ValueError, match="lacks keys"):
        comparison_table([bad])


def test_ranking_sentences_follow_the_test(results):
    t = comparison_table(results)
    lines = ranking_sentences(t, reference="Big")
    assert len(lines) == 3
    small, mid, single = lines  # table order: Small, Mid, Single
    assert small.startswith("Big is better than Small") and "Welch p" in small
    assert mid.startswith("Big and Mid are tied") and "points, not significant; " in mid
    assert "3 (+1 diverged) vs 2 seeds" in mid  # Big's diverged run is said, not dropped silently
    assert "cannot be decided from one seed" in single and "better" not in single
    mid_wins = ranking_sentences(t, reference="Small")[0]
    assert mid_wins.startswith("Mid is better than Small")
    row = {m: t[t["model"] == m].iloc[0] for m in ("Mid", "Small")}
    assert f"({row['Mid']['test_acc_mean']:.2f} ± " in mid_wins  # the winner's numbers come first, as its name
    assert mid_wins.index(f"{row['Mid']['test_acc_mean']:.2f}") < mid_wins.index(f"{row['Small']['test_acc_mean']:.2f}")
    with pytest.raises(ValueError, match="not in the table"):
        ranking_sentences(t, reference="CANet")


def test_comparisons_pair_each_model_with_its_verdict(results):
    t = comparison_table(results + [_result("Broken", 0, None, 50, status="diverged")])
    pairs = comparisons(t, reference="Big")
    assert [row["model"] for _, row, _ in pairs] == ["Broken", "Small", "Mid", "Single"]
    assert all(ref["model"] == "Big" for ref, _, _ in pairs)
    verdicts = {row["model"]: (v.verdict if v else None) for _, row, v in pairs}
    assert verdicts == {"Broken": None, "Small": "better", "Mid": "tied", "Single": "undetermined"}
    assert "Broken has no successful run" in ranking_sentences(t, reference="Big")[0]


def test_holm_sentence_says_which_verdicts_survive_the_correction(results):
    t = comparison_table(results)
    p_small = comparisons(t, reference="Big")[0][2].p  # Big vs Small: better; Mid tied; Single: no test
    sentence = holm_sentence(t, reference="Big")
    assert sentence.startswith("These are 2 Welch tests, each judged at p < 0.05 on its own")
    if 2 * p_small < 0.05:
        assert sentence.endswith("1 of the 1 differences called significant stay so.")
    else:
        assert f"(not: Big vs Small, adjusted {_fmt_p(2 * p_small)})" in sentence
    strict = holm_sentence(t, reference="Big", alpha=p_small * 1.5)  # significant alone, not after x2
    assert strict.endswith(f"0 of the 1 differences called significant stay so (not: Big vs Small, adjusted "
                           f"{_fmt_p(2 * p_small)}).")
    assert holm_sentence(comparison_table(results[:4]), reference="Big") == ""  # fewer than two tests


def test_pareto_front_a_tie_in_one_coordinate_is_dominated_by_the_better_other():
    # Same cost, higher accuracy (and same accuracy, lower cost) dominates; exact duplicates do not.
    assert pareto_front([1.0, 1.0, 2.0, 2.0], [80.0, 85.0, 90.0, 90.0]) == [False, True, True, True]
    assert pareto_front([1.0, 2.0], [90.0, 90.0]) == [True, False]


def test_welch_without_spread_signs_the_infinite_t_by_the_difference():
    r = welch_test([1.0, 1.0], [2.0, 2.0])
    assert r["t"] == -math.inf and r["p"] == 0.0


def test_ranking_a_reference_without_runs_and_a_single_seed_without_a_spread(results):
    t = comparison_table([_result("Ref", 0, None, 10, status="diverged"), _result("A", 0, 0.90, 20),
                          _result("A", 1, 0.91, 20)])
    assert [v for _, _, v in comparisons(t, reference="Ref")] == [None]
    assert ranking_sentences(t, reference="Ref") == ["Ref and A cannot be compared: Ref has no successful run."]
    single = ranking_sentences(comparison_table(results), reference="Big")[2]
    assert "; 93.00 ± 0.10% vs 95.00%, 3 (+1 diverged) vs 1 seeds;" in single  # one seed: no '± nan'


def test_training_images_per_second_when_the_runs_disagree_on_the_image_count():
    runs = [_result("M", 0, 0.5, 1000, seconds=(200.0,), cost={"train_images": 10_000, "train_ips": 50.0}),
            _result("M", 1, 0.5, 1000, seconds=(20.0,), cost={"train_images": 20_000, "train_ips": 500.0})]
    assert comparison_table(runs).iloc[0]["train_ips"] == pytest.approx(275.0)  # the runs' own numbers: median


def test_comparison_table_lists_seeds_in_order_whatever_the_input_order(results):
    big = comparison_table(list(reversed(results))).set_index("model").loc["Big"]
    assert big["seeds"] == [0, 1, 2] and big["test_accs"] == pytest.approx([93.0, 93.1, 92.9])
    assert big["run_epoch_seconds"] == [(0, 3.0), (1, 3.0), (2, 2.0)]
