"""eval/stats.py: mean and std, the paired bootstrap (against exact enumeration), the t-interval over
seeds and its calibration under run-level variance (and the old bootstrap's lack of it); the star
rule (the sign-flip p against brute force, no star from zero spread, star and interval agreeing),
the new-items interval, Holm and BH against their definitions, and a small false-star simulation
with discrete item scores (bench/stats_calibration.py's model)."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.stats import (adjust, bh_q, compare_items, compare_runs, holm, item_test, mean_std, paired_bootstrap,
                        record_text, seed_intervals, seed_test, sign_flip_p, t_cdf_two_sided, t_interval, t_p_value,
                        t_quantile, two_way)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import stats_calibration  # noqa: E402  (the one definition of the simulated benchmark)


def test_mean_std_uses_ddof_1():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.sqrt(5 / 3))
    m, s = mean_std([0.7])
    assert m == 0.7 and np.isnan(s)


def test_bootstrap_identical_arms_and_constant_shift():
    rng = np.random.default_rng(0)
    zero = {"a": np.zeros((3, 40)), "b": np.zeros((3, 7))}
    out = paired_bootstrap(zero, n_boot=300, seed=1)
    assert out["tasks"]["a"] == (0.0, 0.0, 0.0) and out["average"] == (0.0, 0.0, 0.0)
    # arm = baseline + 0.05 on every item: every replicate is exactly the shift
    base = rng.random((2, 30))
    shifted = paired_bootstrap({"a": (base + 0.05) - base}, n_boot=300, seed=1)
    assert shifted["tasks"]["a"] == pytest.approx((0.05, 0.05, 0.05))


def test_bootstrap_matches_the_exact_resampling_distribution():
    """S = 2 seeds, N = 3 items: all 2^2 x 3^3 equally likely resamples, enumerated."""
    d = np.array([[0.0, 1.0, -1.0], [1.0, 1.0, 0.0]])
    exact = np.array([d[list(s)][:, list(i)].mean() for s in itertools.product(range(2), repeat=2)
                      for i in itertools.product(range(3), repeat=3)])
    out = paired_bootstrap({"t": d}, n_boot=40000, seed=0)
    assert out["tasks"]["t"][0] == pytest.approx(d.mean())
    # every value a replicate can take, with its exact probability (values lie on a 1/6 grid)
    grid = lambda x: np.round(np.asarray(x) * 6).astype(int)  # noqa: E731
    values, counts = np.unique(grid(exact), return_counts=True)
    freq = np.array([(grid(out["replicates"]["t"]) == v).mean() for v in values])
    assert set(np.unique(grid(out["replicates"]["t"]))) <= set(values)
    assert np.abs(freq - counts / len(exact)).max() < 0.01
    lo, hi = out["tasks"]["t"][1:]
    assert np.mean(exact < lo - 1e-9) <= 0.025 + 0.01 and np.mean(exact > hi + 1e-9) <= 0.025 + 0.01
    again = paired_bootstrap({"t": d}, n_boot=500, seed=7)
    assert again["tasks"] == paired_bootstrap({"t": d}, n_boot=500, seed=7)["tasks"]


def test_item_only_bootstrap_keeps_the_seeds():
    """resample_seeds=False: each seed's items are constant, so resampling items changes nothing,
    and the interval is the point (the seed-to-seed spread is not within-run uncertainty)."""
    d = np.array([[0.1] * 30, [-0.3] * 30])
    out = paired_bootstrap({"a": d}, n_boot=300, seed=0, resample_seeds=False)
    assert out["tasks"]["a"] == pytest.approx((-0.1, -0.1, -0.1))
    assert paired_bootstrap({"a": d}, n_boot=300, seed=0)["tasks"]["a"][1] == pytest.approx(-0.3)


def test_bootstrap_average_resamples_seeds_jointly():
    """Two tasks with the same seed effect (+1 at seed 0, -1 at seed 1): resampling the seeds
    jointly keeps them correlated, so the average's interval is as wide as each task's."""
    d = np.array([[1.0] * 20, [-1.0] * 20])
    out = paired_bootstrap({"a": d, "b": d.copy()}, n_boot=2000, seed=0)
    assert out["average"][1:] == pytest.approx(out["tasks"]["a"][1:])
    assert out["average"][1] == pytest.approx(-1.0) and out["average"][2] == pytest.approx(1.0)


# ---------------------------------------------------------------------- the t-interval over seeds

def test_t_quantile_against_closed_forms_and_scipy():
    # df = 1 (Cauchy) and df = 2 have closed forms; the rest against scipy where it is installed
    assert t_quantile(0.975, 1) == pytest.approx(np.tan(np.pi * 0.475), rel=1e-12)
    for p in (0.9, 0.975, 0.995):
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / np.sqrt(2 * p * (1 - p)), rel=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (3, 4, 5, 8, 29, 200):
        assert t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)
        assert t_cdf_two_sided(1.3, df) == pytest.approx(1 - 2 * scipy_stats.t.sf(1.3, df), rel=1e-12)


def test_t_interval_formula_and_one_seed():
    v = np.array([0.01, 0.03, -0.02])
    est, lo, hi = t_interval(v)
    half = t_quantile(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    assert est == pytest.approx(v.mean()) and (lo, hi) == pytest.approx((v.mean() - half, v.mean() + half))
    est, lo, hi = t_interval(np.array([0.4]))
    assert est == 0.4 and np.isnan(lo) and np.isnan(hi)
    # seed_intervals: per task the seed means, the average per seed over tasks, then the t-interval
    d = {"a": np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, -1.0, 0.0]]), "b": np.array([[0.0, 1.0], [1.0, 1.0]])}
    out = seed_intervals(d)
    assert out["tasks"]["a"] == pytest.approx(tuple(t_interval([0.5, -0.25])))
    assert out["average"] == pytest.approx(tuple(t_interval([(0.5 + 0.5) / 2, (-0.25 + 1.0) / 2])))
    one = seed_intervals({"a": d["a"][:1]})
    assert one["tasks"]["a"][0] == 0.5 and np.isnan(one["average"][1])


def simulate_null(rng, trials, S, n_tasks=10, n_items=500, sigma=0.01, q=0.02):
    """Per-item paired differences of two arms with no true effect: on each item the arms
    disagree with probability 2q (+1 or -1), and each (arm, seed) run carries a run-level shift
    delta ~ N(0, sigma^2) of its accuracy, the same on every task (what another seed changes).
    Returns the item counts (n_plus, n_minus), each (trials, S, n_tasks)."""
    delta = rng.normal(0.0, sigma, size=(trials, S, 1))
    p_plus = np.clip(q + delta / 2, 0.0, 1.0) * np.ones((1, 1, n_tasks))
    p_minus = np.clip(q - delta / 2, 0.0, 1.0) * np.ones((1, 1, n_tasks))
    n_plus = rng.binomial(n_items, p_plus)
    n_minus = rng.binomial(n_items - n_plus, p_minus / (1 - p_plus))
    return n_plus, n_minus


@pytest.mark.parametrize("S", [2, 3, 5])
@pytest.mark.parametrize("sigma, q", [(0.005, 0.02), (0.01, 0.02), (0.01, 0.1)])
def test_seed_t_interval_is_calibrated_under_run_level_variance(S, sigma, q):
    """The reported interval (t over per-seed paired means) at nominal 95%: it excludes 0 in at
    most 7% of null experiments, for the average of 10 tasks and for one task. 20,000 trials,
    so the estimated rate has a standard error of 0.15 pp."""
    rng = np.random.default_rng(1000 + S)
    n_plus, n_minus = simulate_null(rng, 20000, S, sigma=sigma, q=q)
    task_means = (n_plus - n_minus) / 500  # (trials, S, tasks): what seed_intervals computes per task
    for seed_means in (task_means.mean(axis=2), task_means[:, :, 0]):  # the average; one task
        est, lo, hi = t_interval(seed_means)
        fpr = np.mean((lo > 0) | (hi < 0))
        assert 0.03 <= fpr <= 0.07, (S, sigma, fpr)


def test_old_seed_and_item_bootstrap_fails_the_same_check():
    """The bootstrap over items x seeds, at 2 seeds with the same run-level variance (sigma = 1 pp,
    arms disagreeing on 4% of items), excludes 0 far more often than 5%: 19% here (so the
    calibration test above can fail)."""
    rng = np.random.default_rng(7)
    n_tasks, n_items, trials = 5, 500, 300
    n_plus, n_minus = simulate_null(rng, trials, 2, n_tasks=n_tasks, n_items=n_items, sigma=0.01)
    misses = 0
    for k in range(trials):
        diffs = {}
        for t in range(n_tasks):
            d = np.zeros((2, n_items))
            for s in range(2):
                d[s, :n_plus[k, s, t]] = 1.0
                d[s, n_plus[k, s, t]:n_plus[k, s, t] + n_minus[k, s, t]] = -1.0
            diffs[t] = d
        _, lo, hi = paired_bootstrap(diffs, n_boot=400, seed=k)["average"]
        misses += lo > 0 or hi < 0
    assert misses / trials > 0.10, misses / trials


# ---------------------------------------------------------------------- the star rule

def brute_sign_flip(v):
    """The sign-flip p by definition: all 2^S sign patterns, the fraction with |sum| >= |observed|."""
    obs = abs(sum(v))
    sums = [abs(sum(g * x for g, x in zip(signs, v))) for signs in itertools.product((1, -1), repeat=len(v))]
    return np.mean([x >= obs - 1e-9 for x in sums])


def test_sign_flip_p_against_brute_force_enumeration():
    rng = np.random.default_rng(0)
    for S in range(1, 9):
        for _ in range(20):  # small integers: ties, zeros and equal sums are common, and exact
            v = rng.integers(-3, 4, size=S).astype(float)
            assert sign_flip_p(v) == pytest.approx(brute_sign_flip(v), abs=1e-12), v
    v = rng.normal(size=(3, 4, 6))  # vectorised over leading axes
    assert sign_flip_p(v) == pytest.approx(np.vectorize(lambda i, j: brute_sign_flip(v[i, j]))(*np.indices((3, 4))))
    for S in range(1, 8):  # S identical signs: the smallest p, 2 / 2^S (one pattern and its mirror)
        assert sign_flip_p(np.full(S, 0.05)) == pytest.approx(min(1.0, 2 / 2 ** S))
    assert sign_flip_p(np.full(5, 0.05)) == pytest.approx(0.0625) and sign_flip_p(np.full(6, 0.05)) < 0.05
    # above max_exact: random patterns, p = (1 + hits) / (1 + draws), close to the exact p
    v = np.array([0.3, 0.1, 0.25, 0.4, -0.05, 0.2, 0.15, 0.1])
    mc = sign_flip_p(v, max_exact=4, n_draws=20000, seed=1)
    assert mc == pytest.approx(brute_sign_flip(v), abs=0.006) and mc == sign_flip_p(v, max_exact=4, n_draws=20000, seed=1)


def test_t_p_value_against_scipy_and_conservative_for_fractional_df():
    scipy_stats = pytest.importorskip("scipy.stats")
    t = np.array([0.0, 0.7, 2.1, 4.3, 12.7])
    for df in (1, 2, 4, 9, 30):
        assert t_p_value(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), abs=1e-12)
    assert t_p_value(2.1, 4.7) == t_p_value(2.1, 4) >= 2 * scipy_stats.t.sf(2.1, 4.7)  # rounded down: larger p
    assert t_p_value(2.1, 5000) == t_p_value(2.1, 200) >= 2 * scipy_stats.t.sf(2.1, 5000)  # capped: larger p


def test_zero_spread_is_never_starred_by_the_t_test():
    """Every seed giving the same nonzero difference: the old rule's zero-width interval excluded 0
    (a star); now there is no interval, and only the exact sign-flip test can star, from 6 seeds."""
    for S in (2, 3, 4, 5):
        assert t_interval(np.full(S, 0.05))[1] == pytest.approx(0.05)  # the old rule: [d, d], starred
        r = compare_runs([0.05] * S)
        assert not r["star"] and np.isnan(r["lo"]) and np.isnan(r["p_t"]) and r["basis"] == "sign-flip"
        assert r["p"] == r["p_exact"] == pytest.approx(2 / 2 ** S) and "same difference" in r["reason"]
    six = compare_runs([0.05] * 6)
    assert six["star"] and six["p"] == pytest.approx(1 / 32) and np.isnan(six["lo"])
    assert not compare_runs([0.05] * 6, rule="t", level=0.99)["star"]
    zero = compare_runs([0.0, 0.0, 0.0])
    assert not zero["star"] and zero["reason"] == "no difference at any seed"
    # benchmark items: 20 items, every seed +2 items (different items): per-seed means all 0.1
    d = np.zeros((3, 20))
    for s in range(3):
        d[s, 3 * s:3 * s + 2] = 1.0
    out = compare_items({"a": d})
    for claim in ("these_items", "new_items"):
        assert not out["tasks"]["a"][claim]["star"] and not out["average"][claim]["star"]
    # the average over tasks: equal per-seed means up to float rounding (0.1 + 0.2 + 0.3 in two orders)
    counts = {"a": (1, 3), "b": (2, 2), "c": (3, 1)}  # per task, + items at seed 0 and seed 1, of 10
    diffs = {t: np.array([[1.0] * k + [0.0] * (10 - k) for k in c]) for t, c in counts.items()}
    avg = compare_items(diffs)["average_seed_means"]
    assert avg[0] != avg[1] and avg[0] == pytest.approx(avg[1])  # they differ by rounding only ...
    assert t_interval(avg)[1] > 0  # ... which the old rule starred
    assert not compare_items(diffs)["average"]["these_items"]["star"]


def test_star_agrees_with_the_printed_interval():
    """Where the seeds differ, a these-items star is exactly an interval excluding 0 (and p <= 0.05); the
    new-items interval contains the these-items one and its star implies the these-items star."""
    rng = np.random.default_rng(3)
    effect = rng.uniform(0, 0.5, size=(400, 1, 1))  # per trial: the share of items the arm gains, at every seed
    d = [rng.choice([-1.0, 0.0, 0.0, 1.0], size=(400, 4, 25)) + (rng.random((400, 4, 25)) < effect)]
    r = item_test(d)
    these, new = r["these_items"], r["new_items"]
    assert these["spread"].all() and 0.05 < these["star"].mean() < 0.95
    assert np.array_equal(these["star"], (these["lo"] > 0) | (these["hi"] < 0))
    assert np.array_equal(these["star"], these["p"] <= 0.05)
    assert (new["lo"] <= these["lo"] + 1e-12).all() and (new["hi"] >= these["hi"] - 1e-12).all()
    assert not (new["star"] & ~these["star"]).any() and np.array_equal(new["star"], new["p"] <= 0.05)
    exact = item_test(d, rule="exact")  # the sign-flip test alone: nothing starred at 4 seeds, either claim
    assert not exact["these_items"]["star"].any() and not exact["new_items"]["star"].any()
    assert (exact["these_items"]["p"] >= 0.125).all() and (exact["these_items"]["lo"] == these["lo"]).all()
    rec = compare_runs([0.01, 0.03, -0.02])
    assert rec["lo"] < 0 < rec["hi"] and not rec["star"] and rec["p"] > 0.05
    assert record_text(rec, 100, 1).startswith("+0.7 [") and not record_text(rec).endswith("*")
    rec = compare_runs([0.010, 0.012, 0.011, 0.013])
    assert rec["star"] and rec["lo"] > 0 and record_text(rec).endswith("*") and "sign-flip 0.12" in record_text(rec)
    assert record_text(compare_runs([0.4])) == "+0.400 (1 seed: no interval)"
    assert record_text(compare_runs([0.05] * 3), 100, 1) == "+5.0 (no spread over 3 seeds; sign-flip p=0.25)"


def test_two_way_anova_sums_of_squares():
    """two_way against the textbook decomposition SS_total = SS_seeds + SS_items + SS_resid, by loops."""
    rng = np.random.default_rng(4)
    S, N = 3, 7
    d = rng.integers(-1, 2, size=(S, N)).astype(float)
    g = d.mean()
    ss_s = sum(N * (d[s].mean() - g) ** 2 for s in range(S))
    ss_i = sum(S * (d[:, i].mean() - g) ** 2 for i in range(N))
    ss_t = sum((d[s, i] - g) ** 2 for s in range(S) for i in range(N))
    means, ms_i, ms_e = two_way(d)
    assert means == pytest.approx(d.mean(1))
    assert ms_i == pytest.approx(ss_i / (N - 1)) and ms_e == pytest.approx((ss_t - ss_s - ss_i) / ((S - 1) * (N - 1)))


def test_new_items_interval_grows_with_item_variance():
    """Adding an arm x item effect k * c_i (c centred, the same at every seed) leaves the per-seed means,
    the estimate and the these-items interval as they were, and widens the new-items interval with k."""
    rng = np.random.default_rng(5)
    S, N = 5, 40
    base = rng.choice([-1.0, 0.0, 0.0, 1.0], size=(S, N)) + rng.normal(0, 0.01, size=(S, 1))
    c = rng.normal(size=N)
    c -= c.mean()
    widths, these = [], []
    for k in (0.0, 0.2, 0.5, 1.0, 2.0):
        out = compare_items({"t": base + k * c})["tasks"]["t"]
        widths.append(out["new_items"]["hi"] - out["new_items"]["lo"])
        these.append(out["these_items"]["hi"] - out["these_items"]["lo"])
        assert out["new_items"]["estimate"] == pytest.approx(base.mean())
        if k:  # the item term: (MS_I - MS_E) / (S N), with MS_I grown by S k^2 var(c)
            _, ms_i, ms_e = two_way(base + k * c)
            assert out["new_items"]["var_items"] == pytest.approx((ms_i - ms_e) / (S * N))
    assert np.allclose(these, these[0]) and all(b > a for a, b in zip(widths[1:], widths[2:]))
    assert widths[-1] > 2 * these[0] and widths[0] >= these[0] - 1e-12


# ---------------------------------------------------------------------- multiplicity

def brute_step(p, alpha, method):
    """Which hypotheses the procedure rejects at alpha, by its definition: Holm steps down from the
    smallest p while p(j) <= alpha / (m - j + 1); BH rejects the k smallest, k the largest with
    p(k) <= k alpha / m."""
    order = np.argsort(p, kind="stable")
    m, reject = len(p), np.zeros(len(p), bool)
    alpha = alpha * (1 + 1e-12)  # an alpha computed as p x m / k may round just below p x m / k
    if method == "holm":
        for j, i in enumerate(order):
            if p[i] * (m - j) > alpha:
                break
            reject[i] = True
    else:
        ks = [k for k in range(1, m + 1) if p[order[k - 1]] * m <= k * alpha]
        reject[order[:max(ks, default=0)]] = True
    return reject


def brute_adjusted(p, method):
    """The adjusted p (q) of each hypothesis: the smallest alpha at which the procedure rejects it
    (alpha runs over every threshold where a decision can change, and 1)."""
    m = len(p)
    alphas = sorted({min(1.0, x) for x in ([p[i] * k for i in range(m) for k in range(1, m + 1)]
                                           + [p[i] * m / k for i in range(m) for k in range(1, m + 1)] + [1.0])})
    out = np.ones(m)
    for a in reversed(alphas):
        out[brute_step(p, a, method)] = a
    return out


def test_holm_and_bh_by_hand_and_against_brute_force():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 4 x 0.005, 3 x 0.01, max(2 x 0.03, 1 x 0.04)
    assert bh_q(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])  # 4/1 x 0.005, 4/2 x 0.01, 4/3 x 0.03, 4/4 x 0.04
    assert holm([0.01, np.nan, 0.04]) == pytest.approx([0.02, np.nan, 0.04], nan_ok=True)  # nan: not counted
    assert bh_q([0.9, 0.8]) == pytest.approx([0.9, 0.9]) and holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(6)
    for _ in range(150):  # p on a 1/64 grid: ties, and products that are exact
        m = int(rng.integers(1, 8))
        p = rng.integers(0, 65, size=m) / 64 * rng.choice([1.0, 0.1], size=m)
        assert holm(p) == pytest.approx(brute_adjusted(p, "holm"), abs=1e-12), p
        assert bh_q(p) == pytest.approx(brute_adjusted(p, "bh"), abs=1e-12), p
    rows = rng.random((5, 9)) ** 3  # vectorised: one family per row
    assert holm(rows) == pytest.approx(np.array([holm(r) for r in rows]))
    assert bh_q(rows) == pytest.approx(np.array([bh_q(r) for r in rows]))
    scipy_stats = pytest.importorskip("scipy.stats")
    for r in rows:
        assert bh_q(r) == pytest.approx(scipy_stats.false_discovery_control(r, method="bh"), rel=1e-12)


def test_adjust_sets_p_adj_and_withdraws_stars():
    recs = [compare_runs(v) for v in ([0.010, 0.012, 0.011, 0.013], [0.02, 0.01, 0.03, 0.025], [0.01, -0.02, 0.01],
                                      [0.3])]
    assert [r["star"] for r in recs] == [True, True, False, False] and np.isnan(recs[3]["p"])
    held = adjust(recs, "holm")
    assert [r["family_size"] for r in held] == [3] * 4 and held[0]["p_adj"] == pytest.approx(3 * recs[0]["p"])
    assert [r["star"] for r in held] == [r["p_adj"] <= 0.05 for r in held[:3]] + [False]
    assert held[1]["p_adj"] == pytest.approx(max(2 * recs[1]["p"], held[0]["p_adj"]))
    strict = adjust(recs, "holm", alpha=0.001)
    assert not any(r["star"] for r in strict) and "Holm-adjusted p" in strict[0]["reason"]
    assert recs[0]["star"] and "p_adj" not in recs[0]  # a pure function: the records given are unchanged
    q = adjust(recs, "bh")
    assert [r["p_adj"] for r in q[:3]] == pytest.approx(bh_q([r["p"] for r in recs[:3]]))
    assert "q=" in record_text(q[0]) and "p_Holm=" in record_text(held[0])


# ---------------------------------------------------------------------- calibration with discrete item scores

def false_star_rates(S, N, trials, tau=0.0, seed=0):
    """One task at 50% accuracy, from bench/stats_calibration.py's probit model: the rates of the old
    rule, the these-items star, the new-items star, and of zero-spread nonzero differences."""
    model = {**stats_calibration.MODEL, "mus": (0.0,)}
    d = stats_calibration.simulate(np.random.default_rng(seed), trials, S, N, model, tau=tau)
    r = item_test(d)
    means = d[0].mean(-1)
    _, lo, hi = t_interval(means)
    return ((lo > 1e-9) | (hi < -1e-9)).mean(), r["these_items"]["star"].mean(), r["new_items"]["star"].mean(), \
        (~r["these_items"]["spread"] & (means.mean(-1) != 0)).mean()


def test_false_star_rate_with_ties_at_2_and_5_seeds():
    """20 items per task, no effect: at 2 seeds the old rule stars ~11% (the ties), the new rule stays
    under the bound; at 5 seeds too, and the new-items star also with an arm x item effect, where the
    these-items star exceeds it (on the drawn items the arms do differ). 4000 trials: a 5% rate has a
    standard error of 0.34 points."""
    old, these, new, ties = false_star_rates(2, 20, 4000)
    assert ties > 0.08 and old > 0.08, (old, ties)  # the failure the new rule is for (so this test can fail)
    assert these <= 0.02 and new <= 0.02, (these, new)
    old, these, new, ties = false_star_rates(5, 20, 4000, seed=1)
    assert these <= 0.065 and new <= 0.065, (these, new)
    _, these, new, _ = false_star_rates(10, 20, 3000, tau=0.5, seed=2)
    assert new <= 0.065 < these, (these, new)
