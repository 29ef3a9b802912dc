"""
Statistics on arrays, for the experiment report (eval/report.py): pure functions of numbers,
importing nothing of this project (numpy only; scipy is used only by the tests, as a cross-check).
docs/statistics.md says what each interval covers and shows the calibration table.

How the report calls it (one arm against its baseline, the runs paired by seed):

  compare_runs(seed_diffs)        a per-run metric (val CE, mean cos, Spearman rho, perplexity):
                                  the S per-seed differences arm - baseline -> one record
  compare_items(diffs)            benchmark accuracies, {task: (S, N_task) per-item differences}
                                  -> per task and for the average over tasks, two records:
                                  'these_items' (the claim "on these items": seeds vary, items fixed)
                                  and 'new_items' ("on new items from the same benchmark": seeds
                                  and items vary)
  adjust(records, 'holm' | 'bh')  multiplicity over one family of records: Holm for the primary
                                  family (each arm's benchmark average, corrected across arms),
                                  Benjamini-Hochberg q for the exploratory rest; it sets p_adj and
                                  re-decides the star
  record_text(record)             '+1.20 [+0.31, +2.09] p=0.012 (sign-flip 0.062) *', a table cell

A record is a dict of plain floats, bools and strings: claim ('these runs' | 'these items' |
'new items'), estimate, lo, hi (the printed interval at `level`; nan where there is none),
level, n_seeds, df, p (the p the star and the multiplicity use), p_t, p_exact (the exact
sign-flip p over seeds; not in 'new items', where p_satterthwaite, var_seeds, var_items are),
star, basis ('t', 'sign-flip', 'seeds x items' or 'none'), reason (one short line: why it is
starred, or why it cannot be), and, after adjust(), p_adj, family, family_size. p is nan where
nothing can be tested (one seed) and is then left out of a family.

The star rule (before multiplicity). With S >= 2 seeds whose per-seed differences are not all
equal, the star needs the paired t-test over those S differences (df = S - 1) to reject at
1 - level, which is the printed t-interval excluding 0. When every seed gives the same
difference there is no spread for a t-test to stand on (with 20-50 items per task, or a
Spearman rho over 5 layers, such ties are common, and the old rule starred their zero-width
interval): only the exact sign-flip test may star then, and it cannot below 6 seeds (its smallest
two-sided p is 2 / 2^S: 0.5, 0.25, 0.125, 0.0625 at 2-5 seeds, 0.031 at 6). The exact p is in
every record, to print beside the interval. rule='exact' makes the sign-flip test the only
basis for a star (distribution-free, and so no star below 6 seeds).
Why the t-test and not the exact test everywhere: in the calibration simulation
(bench/stats_calibration.py: discrete item scores, ties included, 2-10 seeds, 20-500 items) the
rule's false-star rate was at most 5.5% in every cell (10,000 experiments each, nominal 5%), where
the old rule reached 10.9%; the exact test has no power at all below 6 seeds. The t-test assumes
the per-seed differences are roughly normal; two to five seeds cannot check that, the exact p
does not need it.

'new items': the two-way (seeds x items) random-effects ANOVA of each task gives the variance of
the estimate over seeds and items, V = A + sum_t max(B_t - E_t, 0): A = var(per-seed means) / S,
the seeds' term (item noise within a run is in it), B_t - E_t = (MS_items - MS_resid) / (S N T^2)
the arm x item effect's. Satterthwaite's df for V; the interval is never narrower than the
these-items one, and its star needs the these-items star too (alone, Satterthwaite's interval
trusted a 1-df seed term too much: 11.2% false stars at 2 seeds, 7.3% at 3). For the claim that
an arm helps on the benchmark, not just on the items it happened to draw.

Building blocks, vectorised over leading axes (the calibration bench calls them directly):

  sign_flip_p(values)      exact two-sided sign-flip p of the mean over the last axis (S seeds)
  t_p_value(t, df)         two-sided Student-t p, vectorised (df rounded down, capped at 200)
  seed_test(values)        the star rule on per-seed differences (..., S): arrays
  item_test([d_task...])   both claims for one task or an average of tasks, d (..., S, N_t): arrays
  two_way(d)               the seeds x items ANOVA of one task: per-seed means, MS_items, MS_resid
  holm(p), bh_q(p)         Holm step-down adjusted p-values and BH q-values over the last axis

Kept as they were (eval/report.py calls them):

  mean_std           mean and sample std (ddof = 1) of the finite values
  t_quantile         Student's t quantile (integer degrees of freedom, exact series, no scipy)
  t_interval         the t-interval of a mean over seeds (df = S - 1), vectorized
  seed_intervals     paired differences per task and their average: a t-interval over the
                     per-seed paired means (no zero-spread guard: use compare_items for stars)
  paired_bootstrap   bootstrap of per-item differences, over items (and optionally seeds)

Why seeds are the unit: a training run is what varies. Two runs of the same arm at different
seeds differ by a run-level shift that moves every item (and every task) together, so the S
per-seed means are the S independent observations, whatever the number of items. A bootstrap
that resamples S = 2 or 3 seeds cannot see that variance (there are only 3 or 10 distinct seed
draws), and its 95% interval excluded 0 in 11-29% of null experiments at 2 seeds
(tests/test_stats.py simulates them). One seed gives no interval: it cannot estimate
run-to-run variance.
"""

import functools
import math

import numpy as np


def mean_std(values):
    """Mean and sample standard deviation (ddof=1) of the finite values; std is nan below two."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def t_cdf_two_sided(t, df):
    """P(|T| < t) for Student's t with integer df >= 1 (Abramowitz & Stegun 26.7.3-4: a finite
    series in cos^2 of theta = atan(t / sqrt(df))). t: a number or array, >= 0."""
    if int(df) != df or df < 1:
        raise ValueError(f"df={df}: the series needs a whole number >= 1")
    df = int(df)
    theta = np.arctan(np.asarray(t, dtype=np.float64) / math.sqrt(df))
    c2 = np.cos(theta) ** 2
    if df % 2 == 1:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c2 + 2.4/(3.5) c2^2 + ...)), df - 1 terms / 2
        term, total = np.ones_like(c2), np.ones_like(c2) if df > 1 else np.zeros_like(c2)
        for k in range(1, (df - 1) // 2):
            term = term * c2 * (2 * k) / (2 * k + 1)
            total = total + term
        return 2 / math.pi * (theta + np.sin(theta) * np.cos(theta) * total)
    term, total = np.ones_like(c2), np.ones_like(c2)  # even: sin (1 + 1/2 c2 + 1.3/(2.4) c2^2 + ...)
    for k in range(1, df // 2):
        term = term * c2 * (2 * k - 1) / (2 * k)
        total = total + term
    return np.sin(theta) * total


def t_quantile(p, df):
    """The p-quantile (0.5 < p < 1) of Student's t with integer df, by bisection on the exact CDF."""
    if not 0.5 < p < 1:
        raise ValueError(f"p={p}: give the upper quantile, 0.5 < p < 1")
    level = 2 * p - 1  # P(|T| < t) = 2p - 1
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(100):  # interval halves each step: far below float64 resolution after 100
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, level=0.95):
    """(estimate, lo, hi) of the mean over the last axis (the S seeds), values (..., S): the
    mean -/+ t_{(1+level)/2, S-1} * std(ddof=1) / sqrt(S). Arrays of shape (...) each. With one
    seed, lo and hi are nan: one run cannot estimate run-to-run variance."""
    v = np.asarray(values, dtype=np.float64)
    S = v.shape[-1]
    est = v.mean(axis=-1)
    if S < 2:
        nan = np.full_like(est, np.nan)
        return est, nan, nan.copy()
    half = t_quantile((1 + level) / 2, S - 1) * v.std(axis=-1, ddof=1) / math.sqrt(S)
    return est, est - half, est + half


def seed_intervals(diffs, level=0.95):
    """Paired differences with t-intervals over seeds. diffs: {task: array (S, N_task)} of
    per-item differences d[s, i] = arm - baseline at seed s on item i (the same S seeds for
    every task). Per task: the S seed means of d, and their t-interval. The average over tasks:
    per seed, the mean of the task means (one run serves every task, so the tasks' seed
    effects are kept together), then its t-interval.
    Returns {'tasks': {task: (est, lo, hi)}, 'average': (est, lo, hi), 'seed_means': {task: (S,)},
    'average_seed_means': (S,)}; lo, hi nan with one seed."""
    names = list(diffs)
    means = {t: np.asarray(diffs[t], dtype=np.float64).mean(axis=-1) for t in names}  # (S,) each
    S = means[names[0]].shape[0]
    if any(np.asarray(diffs[t]).ndim != 2 or m.shape != (S,) or np.asarray(diffs[t]).shape[1] == 0
           for t, m in means.items()):
        raise ValueError("every task needs an (S, N) array with the same S seeds and N >= 1 items")
    average = np.mean([means[t] for t in names], axis=0)  # (S,)
    triple = lambda v: tuple(float(x) for x in t_interval(v, level))  # noqa: E731
    return {"tasks": {t: triple(means[t]) for t in names}, "average": triple(average),
            "seed_means": means, "average_seed_means": average}


def paired_bootstrap(diffs, n_boot=2000, seed=0, chunk=200, resample_seeds=True):
    """Paired bootstrap of per-item differences. diffs: {task: array (S, N_task)} of per-item
    differences d[s, i] = arm - baseline at seed s on item i (the same S seeds for every task).
    A replicate draws S seeds with replacement, shared by all tasks (one training run serves
    every task), and per task N_task items with replacement; its value is the mean of d over
    the drawn seeds and items, and, for the average, the mean of those over tasks.
    resample_seeds=False keeps the S seeds as they are and resamples items only: the within-run
    (item) uncertainty, what another draw of test items would change for these very runs. With
    seeds resampled it is anti-conservative at few seeds (see the module docstring): the report
    uses seed_intervals for its claims.
    Returns {'tasks': {task: (estimate, lo, hi)}, 'average': (estimate, lo, hi), 'replicates':
    {task: (n_boot,) array}}: the 95% percentile interval of the replicates, deterministic for a
    given seed."""
    rng = np.random.default_rng(seed)
    names = list(diffs)
    d = {t: np.asarray(diffs[t], dtype=np.float64) for t in names}
    S = d[names[0]].shape[0]
    if any(x.ndim != 2 or x.shape[0] != S or x.shape[1] == 0 for x in d.values()):
        raise ValueError("every task needs an (S, N) array with the same S seeds and N >= 1 items")
    reps = {t: [] for t in names}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seed_counts = _draw_counts(rng, b, S) if resample_seeds else np.ones((b, S))  # (b, S): how often each seed is drawn
        for t in names:
            n = d[t].shape[1]
            item_counts = _draw_counts(rng, b, n)  # (b, N)
            reps[t].append(((seed_counts @ d[t]) * item_counts).sum(axis=1) / (S * n))  # (b,)
    reps = {t: np.concatenate(r) for t, r in reps.items()}

    def summary(estimate, r):
        lo, hi = np.percentile(r, [2.5, 97.5])
        return float(estimate), float(lo), float(hi)

    out = {"tasks": {t: summary(d[t].mean(), reps[t]) for t in names}}
    out["average"] = summary(np.mean([d[t].mean() for t in names]), np.mean([reps[t] for t in names], axis=0))
    out["replicates"] = reps
    return out


def _draw_counts(rng, b, n):
    """b rows of counts of n indices drawn n times with replacement, (b, n)."""
    draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


# ------------------------------------------------------------------ the tests behind a star

DF_CAP = 200  # t quantiles and p-values take df above this as 200 (the 97.5% quantile moves < 0.6%)


@functools.lru_cache(maxsize=None)
def _t_crit(level, df):
    """t_{(1+level)/2, df} for a whole df >= 1, df capped at DF_CAP (conservative: the quantile falls with df)."""
    return t_quantile((1 + level) / 2, min(int(df), DF_CAP))


def _whole_df(df):
    """df made whole for the exact t series: rounded down (Satterthwaite's is fractional) and
    capped at DF_CAP, both conservative."""
    return np.clip(np.floor(np.asarray(df, dtype=np.float64)), 1, DF_CAP).astype(int)


def _t_crit_array(level, df):
    """_t_crit over an array of df (..,), one quantile per distinct whole df."""
    whole = _whole_df(df)
    return np.vectorize(lambda k: _t_crit(level, k), otypes=[np.float64])(whole) if whole.size else whole * 1.0


def t_p_value(t, df):
    """Two-sided p = P(|T| >= |t|) under Student's t, vectorised over t and df (df rounded down
    to a whole number and capped at DF_CAP, so a fractional Satterthwaite df errs conservative)."""
    t = np.abs(np.asarray(t, dtype=np.float64))
    whole = np.broadcast_to(_whole_df(df), t.shape)
    p = np.full(t.shape, np.nan)
    for k in np.unique(whole):
        sel = (whole == k) & ~np.isnan(t)
        p[sel] = 1 - t_cdf_two_sided(t[sel], int(k))
    return p


def sign_flip_p(values, max_exact=20, n_draws=100_000, seed=0):
    """Two-sided sign-flip p of the mean over the last axis: values (..., S) -> (...).
    With no effect, the arm's and the baseline's run of one seed are exchangeable, so each
    per-seed difference is as likely to carry either sign, and the 2^S sign patterns are equally
    likely: p is the fraction whose |sum| reaches the observed one (zeros and ties count, so it is
    exact, never liberal). All 2^(S-1) patterns up to a global sign for S <= max_exact; above,
    n_draws random patterns (fixed seed), p = (1 + hits) / (1 + n_draws), still a valid p-value
    (its Monte Carlo error at p = 0.05 is 0.0007). The smallest p is 2 / 2^S: 0.0625 at 5 seeds."""
    v = np.asarray(values, dtype=np.float64)
    S = v.shape[-1]
    obs = np.abs(v.sum(-1))
    reach = obs - 1e-9 * np.abs(v).sum(-1)  # the same numbers summed in another order differ by rounding only
    if S <= max_exact:
        sums = v[..., :1]  # (..., 2^(k-1)) signed sums of the first k seeds, the first sign fixed at +
        for s in range(1, S):
            sums = np.concatenate([sums + v[..., s:s + 1], sums - v[..., s:s + 1]], axis=-1)
        return (np.abs(sums) >= reach[..., None]).mean(-1)
    rng = np.random.default_rng(seed)
    hits = np.zeros(obs.shape)
    for start in range(0, n_draws, 1000):
        signs = rng.choice([-1.0, 1.0], size=(min(1000, n_draws - start), S))  # (b, S)
        hits += (np.abs(v @ signs.T) >= reach[..., None]).sum(-1)
    return (1 + hits) / (1 + n_draws)


def seed_test(values, level=0.95, rule="t"):
    """The star rule on per-seed paired differences, vectorised: values (..., S) -> a dict of
    arrays (...): estimate (the mean), lo, hi (the t-interval, df = S - 1; nan with one seed or
    no spread), se, df, p_t (nan likewise), p_exact (sign_flip_p), spread (the seeds' differences
    are not all equal, up to rounding), p (the p the star rests on: p_t where there is spread,
    p_exact where there is none, nan with one seed) and star. rule='exact': p = p_exact everywhere."""
    v = np.asarray(values, dtype=np.float64)
    S = v.shape[-1]
    est = v.mean(-1)
    p_exact = sign_flip_p(v)
    nan = np.full(est.shape, np.nan)
    if S < 2:
        return dict(estimate=est, lo=nan, hi=nan.copy(), se=nan.copy(), df=np.zeros(est.shape), p_t=nan.copy(),
                    p_exact=p_exact, spread=np.zeros(est.shape, bool), p=nan.copy(), star=np.zeros(est.shape, bool))
    sd = v.std(-1, ddof=1)
    spread = sd > 1e-9 * np.abs(v).max(-1)  # (..): zero spread but for float rounding (an average over tasks)
    se = np.where(spread, sd / math.sqrt(S), np.nan)
    half = _t_crit(level, S - 1) * se
    lo, hi = est - half, est + half
    p_t = t_p_value(est / np.where(spread, se, 1.0), S - 1)
    p_t[~spread] = np.nan
    alpha = 1 - level
    if rule == "t":
        p = np.where(spread, p_t, p_exact)
        star = np.where(spread, (lo > 0) | (hi < 0), p_exact <= alpha)
    elif rule == "exact":
        p, star = p_exact, p_exact <= alpha
    else:
        raise ValueError(f"rule={rule!r}: 't' or 'exact'")
    return dict(estimate=est, lo=lo, hi=hi, se=se, df=np.full(est.shape, S - 1.0), p_t=p_t, p_exact=p_exact,
                spread=spread, p=p, star=star)


def two_way(d):
    """The two-way (seeds x items) ANOVA of per-item differences d (..., S, N): the per-seed means
    (..., S), the item mean square MS_I = S var_i(item means) (df N - 1; expectation
    sigma^2_e + S sigma^2_c, c the arm x item effect) and the residual (seed x item) mean square
    MS_E (df (S - 1)(N - 1); expectation sigma^2_e, the item noise within a run)."""
    d = np.asarray(d, dtype=np.float64)
    S, N = d.shape[-2:]
    seed_means = d.mean(-1)  # (..., S)
    item_means = d.mean(-2)  # (..., N)
    resid = d - seed_means[..., :, None] - item_means[..., None, :] + seed_means.mean(-1)[..., None, None]
    nan = np.full(seed_means.shape[:-1], np.nan)
    ms_items = S * item_means.var(-1, ddof=1) if N > 1 else nan
    ms_resid = (resid ** 2).sum((-2, -1)) / ((S - 1) * (N - 1)) if S > 1 and N > 1 else nan.copy()
    return seed_means, ms_items, ms_resid


def item_test(diffs, level=0.95, rule="t"):
    """Both claims for one task, or for the average of several, vectorised: diffs a list of
    arrays (..., S, N_t) of per-item differences arm - baseline, one per task (the same S seeds
    and leading shape). Returns {'these_items': seed_test of the per-seed means (per task the
    mean over its items, averaged over tasks within each seed), 'new_items': a dict of arrays
    estimate, lo, hi, var_seeds (A), var_items, df (Satterthwaite), p_satterthwaite, p, star}.
    New items: V = A + sum_t max(B_t - E_t, 0), with A = var_s(per-seed means) / S (df S - 1),
    B_t = MS_I,t / (S N_t T^2) (df N_t - 1), E_t = MS_E,t / (S N_t T^2) (df (S-1)(N_t-1)); the
    item terms of the tasks add, as the tasks' items are drawn apart, while the seed term
    keeps the tasks of one run together. df = V^2 / (A^2/(S-1) + sum over B_t > E_t of
    B_t^2/(N_t-1) + E_t^2/((S-1)(N_t-1))) (Satterthwaite). The interval is
    est -/+ max(t_df sqrt(V), t_{S-1} sqrt(A)), never narrower than the these-items one, and
    p = max(p_satterthwaite, these-items p); the star needs both, and spread over seeds."""
    parts = [two_way(d) for d in diffs]
    T = len(parts)
    means = np.mean([m for m, _, _ in parts], axis=0)  # (..., S)
    these = seed_test(means, level, rule)
    S = means.shape[-1]
    Ns = [np.shape(d)[-1] for d in diffs]
    est = these["estimate"]
    nan = np.full(est.shape, np.nan)
    if S < 2 or min(Ns) < 2:
        new = dict(estimate=est, lo=nan, hi=nan.copy(), var_seeds=nan.copy(), var_items=nan.copy(), df=nan.copy(),
                   p_satterthwaite=nan.copy(), p=nan.copy(), star=np.zeros(est.shape, bool))
        return {"these_items": these, "new_items": new}
    A = means.var(-1, ddof=1) / S
    var_items, den = np.zeros(est.shape), A ** 2 / (S - 1)
    for (_, ms_i, ms_e), N in zip(parts, Ns):
        B, E = ms_i / (S * N * T * T), ms_e / (S * N * T * T)
        on = B > E
        var_items = var_items + np.where(on, B - E, 0.0)
        den = den + np.where(on, B ** 2 / (N - 1) + E ** 2 / ((S - 1) * (N - 1)), 0.0)
    V = A + var_items
    df = np.where(den > 0, V ** 2 / np.where(den > 0, den, 1.0), S - 1.0)
    half = np.maximum(_t_crit_array(level, df) * np.sqrt(V), _t_crit(level, S - 1) * np.sqrt(A))
    spread = these["spread"]
    half = np.where(spread, half, np.nan)
    lo, hi = est - half, est + half
    p_satt = np.where(spread, t_p_value(est / np.where(V > 0, np.sqrt(V), 1.0), df), np.nan)
    p = np.where(spread, np.maximum(p_satt, these["p"]), 1.0)  # no spread: not testable, counted as p = 1
    star = spread & ((lo > 0) | (hi < 0)) & these["star"]
    new = dict(estimate=est, lo=lo, hi=hi, var_seeds=A, var_items=var_items, df=df, p_satterthwaite=p_satt, p=p,
               star=star)
    return {"these_items": these, "new_items": new}


# ------------------------------------------------------------------ records for the report

def _min_seeds(alpha):
    """The fewest seeds at which the exact two-sided sign-flip test can reach alpha: 2 / 2^S <= alpha."""
    return max(1, math.ceil(math.log2(2 / alpha)))


def _g(x):
    return f"{x:.2g}" if x >= 0.001 else f"{x:.1e}"


def _seed_record(claim, r, S, level, rule):
    """A record (plain numbers and a reason) from seed_test's 0-d arrays."""
    f = {k: float(v) for k, v in r.items() if k not in ("spread", "star")}
    star, spread = bool(r["star"]), bool(r["spread"])
    alpha = 1 - level
    if S == 0:
        reason = "no seed has both runs"
    elif S == 1:
        reason = "1 seed: no interval (run-to-run variance unknown)"
    elif not spread and f["estimate"] == 0:
        reason = "no difference at any seed"
    elif not spread:
        reason = (f"all {S} seeds give the same difference: no spread for a t-test; sign-flip p = {_g(f['p_exact'])}"
                  + (f" (cannot reach {alpha:g} below {_min_seeds(alpha)} seeds)" if S < _min_seeds(alpha) else ""))
    elif rule == "exact":
        reason = (f"sign-flip p = {_g(f['p_exact'])}" + (f" (cannot reach {alpha:g} below {_min_seeds(alpha)} seeds)"
                                                       if S < _min_seeds(alpha) else "") + f"; t p = {_g(f['p_t'])}")
    else:
        reason = f"t p = {_g(f['p_t'])} ({S - 1} df); sign-flip p = {_g(f['p_exact'])}"
    basis = "none" if S < 2 or (not spread and f["estimate"] == 0) else ("t" if spread and rule == "t" else "sign-flip")
    return {"claim": claim, "estimate": f["estimate"], "lo": f["lo"], "hi": f["hi"], "level": level, "n_seeds": S,
            "df": f["df"], "p": f["p"], "p_t": f["p_t"], "p_exact": f["p_exact"], "star": star, "basis": basis,
            "reason": reason}


def _new_items_record(r, these, S, Ns, level):
    """The 'new items' record from item_test's 0-d arrays."""
    f = {k: float(v) for k, v in r.items() if k != "star"}
    alpha = 1 - level
    if S < 2:
        reason = "1 seed: no interval (run-to-run variance unknown)"
    elif min(Ns) < 2:
        reason = "a task with one item: item variance unknown"
    elif not these["spread"]:
        reason = "no spread over seeds: the seeds x items interval needs it"
    elif f["p_satterthwaite"] <= alpha < these["p"]:
        reason = (f"Satterthwaite p = {_g(f['p_satterthwaite'])} (df {f['df']:.0f}) but these-items p = "
                  f"{_g(these['p'])}: the interval is the wider these-items one")
    else:
        reason = f"p = {_g(f['p'])} (Satterthwaite df {f['df']:.0f}; these-items p {_g(these['p'])})"
    return {"claim": "new items", "estimate": f["estimate"], "lo": f["lo"], "hi": f["hi"], "level": level,
            "n_seeds": S, "df": f["df"], "p": f["p"], "p_satterthwaite": f["p_satterthwaite"],
            "var_seeds": f["var_seeds"], "var_items": f["var_items"], "star": bool(r["star"]),
            "basis": "seeds x items" if math.isfinite(f["lo"]) else "none",
            "reason": reason}


def compare_runs(seed_diffs, level=0.95, rule="t"):
    """One per-run metric, arm - baseline: seed_diffs, the S per-seed paired differences (finite
    numbers, the seeds both arms have). The claim is 'these runs' (this training setup, over
    seeds). Returns a record (see the module docstring)."""
    v = np.asarray(seed_diffs, dtype=np.float64).reshape(-1)
    if v.size == 0:
        r = seed_test(np.zeros(1), level, rule)
        r = {**r, "estimate": np.float64(np.nan), "p": np.float64(np.nan), "p_exact": np.float64(np.nan)}
        return _seed_record("these runs", r, 0, level, rule)
    return _seed_record("these runs", seed_test(v, level, rule), v.size, level, rule)


def compare_items(diffs, level=0.95, rule="t"):
    """Benchmark accuracies, arm - baseline: diffs {task: array (S, N_task)} of per-item
    differences d[s, i] at seed s on item i (the same S seeds for every task, the items scored
    in every run of both arms). Per task and for the average over tasks (per seed the mean of
    the task means: one run serves every task), two records: 'these_items' and 'new_items'.
    Returns {'tasks': {task: {'these_items': record, 'new_items': record}}, 'average': {...},
    'seed_means': {task: (S,)}, 'average_seed_means': (S,)}."""
    names = list(diffs)
    d = {t: np.asarray(diffs[t], dtype=np.float64) for t in names}
    S = d[names[0]].shape[0] if names else 0
    if not names or any(x.ndim != 2 or x.shape[0] != S or x.shape[1] == 0 for x in d.values()):
        raise ValueError("every task needs an (S, N) array with the same S seeds and N >= 1 items")

    def both(tasks):
        r = item_test([d[t] for t in tasks], level, rule)
        these = _seed_record("these items", r["these_items"], S, level, rule)
        return {"these_items": these,
                "new_items": _new_items_record(r["new_items"], r["these_items"] | {"p": these["p"]}, S,
                                               [d[t].shape[1] for t in tasks], level)}

    means = {t: d[t].mean(axis=1) for t in names}
    return {"tasks": {t: both([t]) for t in names}, "average": both(names), "seed_means": means,
            "average_seed_means": np.mean([means[t] for t in names], axis=0)}


# ------------------------------------------------------------------ multiplicity

def _sorted_rows(p):
    """p as float (..., m), its ascending order along the last axis (nan last), the sorted values
    and the number of finite p per row (..., 1)."""
    p = np.atleast_1d(np.asarray(p, dtype=np.float64))
    order = np.argsort(p, axis=-1, kind="stable")
    return p, order, np.take_along_axis(p, order, axis=-1), np.isfinite(p).sum(-1, keepdims=True)


def _unsort(order, values):
    out = np.empty_like(values)
    np.put_along_axis(out, order, values, axis=-1)
    return out


def holm(p):
    """Holm's step-down adjusted p-values over the last axis (one family per row; nan entries stay
    nan and are not counted): with p sorted ascending and m finite, p_adj(k) = max over j <= k of
    min(1, (m - j + 1) p(j)). Starring p_adj <= alpha keeps the chance of any false star in the
    family <= alpha, whatever the dependence between the tests (they share the baseline runs)."""
    p, order, s, m = _sorted_rows(p)
    k = np.arange(s.shape[-1])  # 0-based rank: factor m - k
    adj = np.fmax.accumulate(np.minimum(1.0, (m - k) * s), axis=-1)  # fmax: the nan tail does not spread
    return _unsort(order, np.where(np.isfinite(s), adj, np.nan))


def bh_q(p):
    """Benjamini-Hochberg q-values over the last axis (nan entries stay nan and are not counted):
    with p sorted ascending and m finite, q(k) = min over j >= k of min(1, m p(j) / j), the
    smallest false discovery rate at which the test would be among the discoveries (the same
    numbers as scipy.stats.false_discovery_control(p, method='bh'))."""
    p, order, s, m = _sorted_rows(p)
    raw = m * s / np.arange(1, s.shape[-1] + 1)
    q = np.fmin.accumulate(raw[..., ::-1], axis=-1)[..., ::-1]  # fmin: the nan tail does not spread
    return _unsort(order, np.where(np.isfinite(s), np.minimum(1.0, q), np.nan))


def adjust(records, method="holm", alpha=0.05):
    """Multiplicity over one family of records (a list): each copy gets p_adj (Holm's adjusted p,
    or the BH q-value, over the family's finite p), family ('holm' | 'bh') and family_size, and
    keeps its star only where p_adj <= alpha (a record that could not be starred stays
    unstarred). Primary: 'holm' over each arm's benchmark average (and any other comparison
    named in advance). Exploratory: 'bh' over everything else the report stars."""
    if method not in ("holm", "bh"):
        raise ValueError(f"method={method!r}: 'holm' or 'bh'")
    p = np.array([r["p"] for r in records], dtype=np.float64)
    adj = (holm if method == "holm" else bh_q)(p) if len(records) else p
    m = int(np.isfinite(p).sum())
    name = "Holm-adjusted p" if method == "holm" else "BH q"
    out = []
    for r, a in zip(records, adj):
        r = {**r, "p_adj": float(a), "family": method, "family_size": m}
        if r["star"] and not a <= alpha:
            r["star"] = False
            r["reason"] = f"{name} = {_g(a)} over {m} comparisons (unadjusted: {r['reason']})"
        elif r["star"]:
            r["reason"] = f"{r['reason']}; {name} = {_g(a)} over {m}"
        out.append(r)
    return out


def record_text(rec, scale=1.0, digits=3):
    """A table cell: '+1.200 [+0.310, +2.090] p=0.012 (sign-flip 0.062) *', the p being p_adj where
    adjust() has set it (p_Holm=, q=). No interval: the estimate and why ('1 seed: no interval',
    'no spread over 4 seeds; sign-flip p=0.12')."""
    if rec is None or rec.get("estimate") is None or not math.isfinite(rec["estimate"]):
        return "—"
    e, lo, hi = (rec[k] * scale for k in ("estimate", "lo", "hi"))
    star = " *" if rec["star"] else ""
    p = rec.get("p_adj", rec["p"])
    tag = {"holm": "p_Holm", "bh": "q"}.get(rec.get("family"), "p")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        S = rec["n_seeds"]
        why = (f"{S} seed: no interval" if S < 2 else
               f"no spread over {S} seeds; sign-flip {tag}={_g(p)}" if rec["basis"] == "sign-flip" else "no interval")
        return f"{e:+.{digits}f} ({why}){star}"
    exact = f" (sign-flip {_g(rec['p_exact'])})" if math.isfinite(rec.get("p_exact", math.nan)) else ""
    return f"{e:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {tag}={_g(p)}{exact}{star}"


# ---------------------------------------------------------------------- rank correlations

def _average_ranks(a):
    """1-based ranks of a; tied values all get the mean of the ranks they span."""
    _, inverse, counts = np.unique(np.asarray(a, dtype=np.float64), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse]


def _check_pair(x, y):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    return x, y


def spearman(x, y):
    """Spearman's rho: the Pearson correlation of the ranks (ties get average ranks).
    nan when either input has fewer than 2 values or is constant."""
    x, y = _check_pair(x, y)
    if len(x) < 2:
        return float("nan")
    rx = _average_ranks(x) - (len(x) + 1) / 2.0  # average ranks always have mean (n+1)/2
    ry = _average_ranks(y) - (len(y) + 1) / 2.0
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def kendall(x, y):
    """Kendall's tau-b, which handles ties:
        (concordant - discordant) / sqrt((pairs not tied in x) * (pairs not tied in y))
    nan when either input is constant. O(n^2) time and memory: meant for curves over layers."""
    x, y = _check_pair(x, y)
    i, j = np.triu_indices(len(x), k=1)  # every unordered pair once
    sx = np.sign(x[i] - x[j])  # 0 where the pair is tied in x
    sy = np.sign(y[i] - y[j])
    denom = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")
