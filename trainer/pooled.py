"""`looper compare-seeds`: arms trained with several seeds, compared on the same questions.

Each arm is one eval output dir per training seed (in seed order); an arm with a single eval (the base
model, the SFT model) is shared by every seed. Every arm is compared with every baseline, first seed by
seed (exact McNemar, paired bootstrap, as `looper compare`), then pooled over seeds:

- difference: the mean of (arm correct - baseline correct) over questions x seeds, in points;
- interval: a cluster bootstrap over questions: each resample draws questions with replacement and keeps
  every seed's answer to a drawn question, so the correlation between seeds on one question stays in;
- p (primary): the Cochran-Mantel-Haenszel test with the seeds as strata in its matched-pairs form (the
  stratified McNemar test). With b_s / c_s the questions only the arm / only the baseline got right
  under seed s: chi2 = (sum_s (b_s - c_s))^2 / sum_s (b_s + c_s), 1 degree of freedom, no continuity
  correction; p = 1 when no pair is discordant. It counts every (question, seed) pair as independent,
  so when seeds agree on which questions they get right it can be smaller than the data warrant;
- p_permutation: an exact sign-flip permutation test over questions. Per question t_q is the summed
  difference over seeds; under the null each t_q is as likely to be -t_q, and p is the share of all
  2^m sign assignments (m questions with t_q != 0) whose |sum| reaches the observed one, computed exactly
  from the distribution of the sum rather than by sampling. It keeps a question's seeds together; with
  one seed it equals the exact McNemar p.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from trainer.compare import (
    MODES,
    CompareError,
    EvalRun,
    bootstrap_mean_interval,
    check_comparable,
    load_run,
    mcnemar_exact,
    paired_bootstrap,
)

JSON_NAME = "pooled.json"
MARKDOWN_NAME = "pooled.md"


# --- statistics -------------------------------------------------------------------------------------------


def cmh_matched_pairs(b: list[int], c: list[int]) -> tuple[float, float]:
    """(chi2, p) of the matched-pairs CMH test: (sum(b - c))^2 / sum(b + c), 1 df, uncorrected."""
    discordant = sum(b) + sum(c)
    if discordant == 0:
        return 0.0, 1.0
    chi2 = (sum(b) - sum(c)) ** 2 / discordant
    return chi2, math.erfc(math.sqrt(chi2 / 2))  # the chi-square(1) tail is that of |Z| > sqrt(chi2)


def sign_flip_p(per_question: np.ndarray) -> float:
    """Exact two-sided p that integer per-question differences are symmetric about 0: P(|sum of e_q t_q| >=
    |sum t_q|) over independent fair signs e_q. The sum's distribution is the convolution, per magnitude k,
    of k * (2 Binomial(m_k, 1/2) - m_k), m_k the questions with |t_q| = k."""
    magnitudes = np.abs(per_question[per_question != 0]).astype(np.int64)
    if magnitudes.size == 0:
        return 1.0
    observed = abs(int(per_question.sum()))
    pmf = np.ones(1)  # over the sum's support -total..total, in steps of 1
    for k, m in enumerate(np.bincount(magnitudes)):
        if k == 0 or m == 0:
            continue
        m = int(m)
        binomial = np.array([math.comb(m, j) / 2**m for j in range(m + 1)])  # big-int division: correctly rounded
        spread = np.zeros(2 * k * m + 1)
        spread[:: 2 * k] = binomial
        pmf = np.convolve(pmf, spread)
    total = int(magnitudes.sum())
    support = np.arange(-total, total + 1)
    return min(1.0, float(pmf[np.abs(support) >= observed].sum()))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Discordant counts: (only a right, only b right)."""
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


# --- loading ----------------------------------------------------------------------------------------------


def _load_arms(runs: dict[str, list[str | Path]]) -> dict[str, list[EvalRun]]:
    if not runs:
        raise CompareError("no arms: pass at least two, each as NAME=DIR[,DIR...] (one eval dir per seed)")
    loaded = {}
    for arm, paths in runs.items():
        paths = list(paths)
        if not paths:
            raise CompareError(f"arm {arm!r} has no eval dirs: pass {arm}=DIR[,DIR...], one per seed")
        loaded[arm] = [load_run(p, name=arm if len(paths) == 1 else f"{arm}[seed {k}]") for k, p in enumerate(paths)]
    seeds = {arm: len(r) for arm, r in loaded.items() if len(r) > 1}
    if len(set(seeds.values())) > 1:
        counts = ", ".join(f"{arm}: {n}" for arm, n in seeds.items())
        raise CompareError(
            f"arms have different numbers of seeds ({counts}): pass the same number of eval dirs (one per seed, "
            "in seed order) for every multi-seed arm, or a single eval for an arm shared by all seeds"
        )
    return loaded


def _check_baselines(arms: dict[str, list[EvalRun]], baselines: list[str]) -> None:
    if not baselines:
        raise CompareError(f"no baseline: name one or more of the arms ({', '.join(arms)}) as a baseline")
    unknown = [b for b in baselines if b not in arms]
    if unknown:
        raise CompareError(f"unknown baseline {', '.join(map(repr, unknown))}: the arms are {', '.join(arms)}")
    if len(arms) < 2:
        raise CompareError("only one arm: pass at least one arm besides the baseline")


# --- the comparison ---------------------------------------------------------------------------------------


def _compare(
    arm: list[EvalRun], base: list[EvalRun], ids: list[str], mode: str, n_resamples: int, seed: int
) -> tuple[list[dict], dict]:
    n_seeds = max(len(arm), len(base))
    a = np.array([r.correct(ids, mode) for r in arm], dtype=bool)
    b = np.array([r.correct(ids, mode) for r in base], dtype=bool)
    shape = (n_seeds, len(ids))
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)  # a single run pairs with every seed
    per_seed = []
    for s in range(n_seeds):
        only_a, only_b = _pair(a[s], b[s])
        low, high = paired_bootstrap(a[s].tolist(), b[s].tolist(), n_resamples, seed)
        per_seed.append(
            {
                "seed_index": s,
                "a_run": str(arm[min(s, len(arm) - 1)].path),
                "b_run": str(base[min(s, len(base) - 1)].path),
                "a_correct": int(a[s].sum()),
                "b_correct": int(b[s].sum()),
                "n": len(ids),
                "diff_pts": 100 * (int(a[s].sum()) - int(b[s].sum())) / len(ids),
                "ci": [100 * low, 100 * high],
                "p": mcnemar_exact(only_a, only_b),
                "b": only_a,
                "c": only_b,
            }
        )
    per_question = a.astype(np.int64).sum(axis=0) - b.astype(np.int64).sum(axis=0)  # summed over seeds
    low, high = bootstrap_mean_interval(per_question / n_seeds, n_resamples, seed)  # one draw = one question, all seeds
    chi2, p = cmh_matched_pairs([r["b"] for r in per_seed], [r["c"] for r in per_seed])
    pooled = {
        "diff_pts": 100 * float(per_question.sum()) / (n_seeds * len(ids)),
        "ci": [100 * low, 100 * high],
        "p": p,
        "chi2": chi2,
        "p_permutation": sign_flip_p(per_question),
        "b": sum(r["b"] for r in per_seed),
        "c": sum(r["c"] for r in per_seed),
        "n_seeds": n_seeds,
        "n_questions": len(ids),
        "a_acc": float(a.mean()),
        "b_acc": float(b.mean()),
    }
    return per_seed, pooled


def pooled_comparison(
    runs: dict[str, list[str | Path]],
    baselines: list[str],
    mode: str = "strict",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Every arm against every baseline, per seed and pooled over seeds (the module docstring has the tests).

    runs: arm name -> its eval output dirs (or predictions JSONL files), one per training seed in seed order;
    a single eval is shared by every seed. A multi-seed baseline pairs seed i with seed i. All evals must
    cover the same questions. Keys of result["comparisons"]: "<arm> - <baseline>"; a pair of two baselines
    appears once, in the order of `baselines`. Differences and intervals are in points, accuracies
    fractions; the bootstraps are seeded with `seed`, so the result is deterministic.
    """
    if mode not in MODES:
        raise CompareError(f"mode must be strict or flexible, got {mode!r}")
    if n_resamples < 1:
        raise CompareError(f"n_resamples must be at least 1, got {n_resamples}")
    arms = _load_arms(runs)
    _check_baselines(arms, baselines)
    ids = check_comparable([r for arm_runs in arms.values() for r in arm_runs])
    comparisons = {}
    for k, baseline in enumerate(baselines):
        for arm, arm_runs in arms.items():
            if arm == baseline or arm in baselines[:k]:  # b - a of two baselines is a - b negated
                continue
            per_seed, pooled = _compare(arm_runs, arms[baseline], ids, mode, n_resamples, seed)
            comparisons[f"{arm} - {baseline}"] = {
                "arm": arm,
                "baseline": baseline,
                "per_seed": per_seed,
                "pooled": pooled,
            }
    return {
        "mode": mode,
        "n_questions": len(ids),
        "n_seeds": max(len(r) for r in arms.values()),
        "bootstrap": {"resamples": n_resamples, "seed": seed},
        "arms": {arm: [str(r.path) for r in arm_runs] for arm, arm_runs in arms.items()},
        "baselines": list(baselines),
        "comparisons": comparisons,
    }


# --- report -----------------------------------------------------------------------------------------------


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render_pooled_markdown(result: dict) -> str:
    """One table per comparison: a row per seed and the pooled row."""
    boot = result["bootstrap"]
    lines = [
        "# Seed-pooled comparison",
        "",
        f"{result['n_questions']} questions, the same set for every eval; mode **{result['mode']}**; up to "
        f"{result['n_seeds']} seeds per arm (an arm with one eval is paired with every seed). Per seed: the exact "
        f"McNemar p and a paired-bootstrap 95% interval ({boot['resamples']:,} resamples, seed {boot['seed']}). "
        "Pooled: the mean difference over questions x seeds, a 95% cluster-bootstrap interval over questions "
        "(a drawn question brings all its seeds), the stratified McNemar (CMH, seeds as strata) p, "
        "and an exact sign-flip permutation p over questions.",
    ]
    for key, comparison in result["comparisons"].items():
        lines += [
            "",
            f"## {key}",
            "",
            f"| seed | {comparison['arm']} | {comparison['baseline']} | difference | 95% CI | only arm right "
            "| only baseline right | p |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in comparison["per_seed"]:
            lines.append(
                f"| {row['seed_index']} | {100 * row['a_correct'] / row['n']:.1f}% | "
                f"{100 * row['b_correct'] / row['n']:.1f}% | {row['diff_pts']:+.2f} pts | "
                f"{row['ci'][0]:+.2f} to {row['ci'][1]:+.2f} | {row['b']} | {row['c']} | {_p(row['p'])} (McNemar) |"
            )
        pooled = comparison["pooled"]
        lines.append(
            f"| **pooled** ({pooled['n_seeds']} seeds) | {100 * pooled['a_acc']:.1f}% | {100 * pooled['b_acc']:.1f}% | "
            f"**{pooled['diff_pts']:+.2f} pts** | {pooled['ci'][0]:+.2f} to {pooled['ci'][1]:+.2f} | {pooled['b']} "
            f"| {pooled['c']} | **{_p(pooled['p'])}** (CMH, chi2 {pooled['chi2']:.2f}); "
            f"{_p(pooled['p_permutation'])} (sign flip) |"
        )
    return "\n".join(lines) + "\n"


def write_pooled(result: dict, out_dir: str | Path) -> dict:
    """pooled.json and pooled.md in out_dir; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(result, indent=2) + "\n")
    (out / MARKDOWN_NAME).write_text(render_pooled_markdown(result), encoding="utf-8")
    return {"json": str(out / JSON_NAME), "markdown": str(out / MARKDOWN_NAME)}
