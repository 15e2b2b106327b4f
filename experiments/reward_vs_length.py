"""Does a reward pay for brevity, or for anything but correctness? Each Regime W design against answer length.

    python experiments/reward_vs_length.py runs/regime-w-ablation-one-lease/seed-0/rollouts/rollouts.jsonl
    python experiments/reward_vs_length.py --samples 400          # looper.samples groups (seeded), no file needed

Part 1, the file as scored:
For correct and for wrong trajectories separately (correctness moves the reward most; holding it fixed leaves
what the rest of the reward does): the Pearson correlation of `completion_tokens` with the trajectory's
`reward`, `quality` and `coherence`, and, over every pair of trajectories of the same question and the same
correctness whose lengths and rewards differ, how often the shorter one has the higher reward (0.5: no
preference).

Part 2, every design re-scored on the same groups (the texts, arm names and gold answers of the file, or of
`--samples` groups): the correctness reward, Regime W v1, v2 (design A, the gated tie-break), the random-tiebreak
control, design C (correctness advantages under GRPO's default batch scaling, modulated sign-preservingly by v2's
robustness u) and design D (correctness against the arms' majority answer). Per design, over pairs and groups of
equal correctness within a question: how often the shorter answer gets the higher reward (`shorter_wins`, over
pairs whose rewards differ), the stratified Spearman correlation of reward with words (ranks centred within each
question x correctness cell, then pooled), the non-correctness share of the advantage in mixed groups (L2 norm of
its group-centred part over correctness'; any per-group scaling keeps the ratio), mean and max, and the share of
uniform groups (all right or all wrong) whose rewards still differ (`phantom`). D adds its label accuracy.
Design B (probe variants) is scored by correctness alone, so it is the correctness row. Prints tables; `--json
OUT` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from itertools import combinations
from pathlib import Path

from looper_common.jsonl import read_rows
from reward_service.arms import REGIME_W_ARMS
from reward_service.regime_w import SCORERS
from shared_schemas.answers import majority_answer
from shared_schemas.models import ScoreRequest, ScoringWeights, Trajectory

DESIGNS = ("correctness", "regime_w_v1", "regime_w_v2", "random_tiebreak", "modulated_v2", "consensus",
           "probe_variants")  # fmt: skip
ROLES = {arm.name: arm.role for arm in REGIME_W_ARMS}

FIELDS = ("reward", "quality", "coherence")


def pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def length_bias(records: list[dict]) -> dict:
    """Per correctness ("correct", "wrong"): trajectories, correlations of length with each score, and the
    share of same-question pairs in which the shorter trajectory has the higher reward."""
    out = {}
    for label, correct in (("correct", True), ("wrong", False)):
        trajectories, shorter_higher, pairs = [], 0, 0
        for record in records:
            group = [t for t in record["trajectories"] if bool(t["correct"]) == correct]
            trajectories += group
            for a, b in combinations(group, 2):
                if a["completion_tokens"] == b["completion_tokens"] or a["reward"] == b["reward"]:
                    continue
                pairs += 1
                shorter_higher += (a["completion_tokens"] < b["completion_tokens"]) == (a["reward"] > b["reward"])
        lengths = [float(t["completion_tokens"]) for t in trajectories]
        out[label] = {
            "trajectories": len(trajectories),
            "mean_tokens": statistics.fmean(lengths) if lengths else None,
            **{f"corr_tokens_{f}": pearson(lengths, [float(t[f]) for t in trajectories]) for f in FIELDS},
            "pairs": pairs,
            "shorter_has_higher_reward": shorter_higher / pairs if pairs else None,
        }
    return out


# --- part 2: every design on the same groups -----------------------------------------------------------------


def requests_of(records: list[dict]) -> list[ScoreRequest]:
    return [
        ScoreRequest(
            question_id=r["question_id"],
            question=r["question"],
            gold_answer=r.get("gold_answer"),
            trajectories=[Trajectory(arm_name=t["arm_name"], text=t["text"]) for t in r["trajectories"]],
        )
        for r in records
    ]


def sample_requests(n: int, seed: int = 0) -> list[ScoreRequest]:
    """looper.samples groups of 11 arms, of varied lengths and error rates."""
    from looper.samples import sample_group

    rng = random.Random(seed)
    return [
        sample_group(rng, f"sample-{k}", words=rng.choice((60, 120, 200, 300)), wrong_rate=rng.choice((0.1, 0.3, 0.6)))
        for k in range(n)
    ]


def stratified_spearman(cells: list[list[tuple[float, float]]]) -> float | None:
    """Pearson correlation of (x, y) ranks, each centred within its cell and pooled over cells."""
    xs, ys = [], []
    for cell in cells:
        if len(cell) < 2:
            continue
        for values, out in ((([x for x, _ in cell]), xs), (([y for _, y in cell]), ys)):
            ranks = _ranks(values)
            mean = sum(ranks) / len(ranks)
            out.extend(r - mean for r in ranks)
    sxx, syy = sum(x * x for x in xs), sum(y * y for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / math.sqrt(sxx * syy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _centred_norm(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values))


def design_values(requests: list[ScoreRequest], weights: ScoringWeights = ScoringWeights()) -> dict[str, list[dict]]:
    """Per design, per group: words, correctness, the design's per-trajectory value (reward, or for design C the
    modulated advantage) and its correctness part, from one scoring of every group by each scorer."""
    import torch

    from trainer.rl import RLStageConfig, modulated_advantages

    scored = {name: [spec.score(r, ROLES, weights) for r in requests] for name, spec in SCORERS.items()}
    out: dict[str, list[dict]] = {d: [] for d in DESIGNS}
    base = lambda c: weights.correct_base if c else weights.incorrect_base  # noqa: E731
    for name in SCORERS:
        for result in scored[name]:
            ts = result.trajectories
            out[name].append({"words": [t.words for t in ts], "correct": [t.correct for t in ts],
                              "value": [t.reward for t in ts], "correctness": [base(t.correct) for t in ts]})  # fmt: skip
    out["correctness"] = [{**g, "value": list(g["correctness"])} for g in out["regime_w_v2"]]

    # C: TRL's advantages of the correctness reward under the RL stage's default scaling (batch: one std for all)
    config = RLStageConfig(model="-", train_file="-")
    flat = torch.tensor([v for g in out["correctness"] for v in g["value"]], dtype=torch.float64)
    std = flat.std() if config.scale_rewards == "batch" else torch.tensor(1.0, dtype=torch.float64)
    for g, result in zip(out["correctness"], scored["regime_w_v2"], strict=True):
        rewards = torch.tensor(g["value"], dtype=torch.float64)
        advantages = rewards - rewards.mean()
        if config.scale_rewards == "batch":
            advantages = advantages / (std + 1e-4)
        elif config.scale_rewards == "group":
            advantages = advantages / (rewards.std() + 1e-4)
        u = torch.tensor([t.robustness or 0.0 for t in result.trajectories], dtype=torch.float64)
        modulated = modulated_advantages(advantages, u, RLStageConfig.modulation_beta, RLStageConfig.modulation_kappa)
        out["modulated_v2"].append({**g, "value": modulated.tolist(), "correctness": advantages.tolist()})

    # D: correctness against the arms' majority answer
    for g, result in zip(out["correctness"], scored["regime_w_v2"], strict=True):
        label = majority_answer([t.answer for t in result.trajectories])
        correct = [t.answer is not None and t.answer == label for t in result.trajectories]
        values = [base(c) for c in correct]
        out["consensus"].append({**g, "correct": correct, "value": values, "correctness": values,
                                 "label_right": label is not None and label == result.reference_answer,
                                 "gold": result.label_source == "gold"})  # fmt: skip

    # B: the correctness reward on every group it scores; it changes which prompts a round asks, not the reward
    out["probe_variants"] = [dict(g) for g in out["correctness"]]
    return out


def design_diagnostics(groups: list[dict]) -> dict:
    """The length and share figures of one design's groups (see the module docstring)."""
    pairs = shorter = 0
    cells, shares = [], []
    uniform = phantom = 0
    for g in groups:
        n = len(g["value"])
        for correct in (True, False):
            members = [i for i in range(n) if g["correct"][i] == correct]
            cells.append([(g["words"][i], g["value"][i]) for i in members])
            for i, j in combinations(members, 2):
                if g["words"][i] == g["words"][j] or abs(g["value"][i] - g["value"][j]) < 1e-12:
                    continue
                pairs += 1
                shorter += (g["words"][i] < g["words"][j]) == (g["value"][i] > g["value"][j])
        extra = [v - c for v, c in zip(g["value"], g["correctness"], strict=True)]
        if len(set(g["correct"])) == 1:
            uniform += 1
            phantom += max(g["value"]) - min(g["value"]) > 1e-12
        else:
            shares.append(_centred_norm(extra) / _centred_norm(g["correctness"]))
    labelled = [g for g in groups if g.get("gold")]
    return {
        "groups": len(groups),
        "pairs": pairs,
        "shorter_wins": shorter / pairs if pairs else None,
        "spearman_words": stratified_spearman(cells),
        "mixed_groups": len(shares),
        "share_mean": sum(shares) / len(shares) if shares else None,
        "share_max": max(shares) if shares else None,
        "uniform_groups": uniform,
        "phantom": phantom / uniform if uniform else None,
        "label_accuracy": sum(g["label_right"] for g in labelled) / len(labelled) if labelled else None,
    }


def all_designs(requests: list[ScoreRequest]) -> dict[str, dict]:
    return {name: design_diagnostics(groups) for name, groups in design_values(requests).items()}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


DESIGN_COLUMNS = ("groups", "pairs", "shorter_wins", "spearman_words", "share_mean", "share_max", "phantom",
                  "label_accuracy")  # fmt: skip


def print_designs(designs: dict[str, dict]) -> None:
    print("| design | " + " | ".join(DESIGN_COLUMNS) + " |")
    print("|---" * (len(DESIGN_COLUMNS) + 1) + "|")
    for name, row in designs.items():
        print(f"| {name} | " + " | ".join(_fmt(row[c]) for c in DESIGN_COLUMNS) + " |")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rollouts", nargs="?", help="a rollouts JSONL written by `looper rollouts`")
    p.add_argument("--samples", type=int, default=0, help="without a file: this many looper.samples groups")
    p.add_argument("--seed", type=int, default=0, help="the samples' seed")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if bool(args.rollouts) == bool(args.samples):
        p.error("give a rollouts file or --samples N (one of them)")
    if args.samples:
        designs = all_designs(sample_requests(args.samples, args.seed))
        result = {"samples": args.samples, "seed": args.seed, "designs": designs}
        print(f"looper.samples: {args.samples} groups of 11 arms (seed {args.seed})")
        print_designs(designs)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    records = read_rows(args.rollouts, kind="rollout record")
    result = {"rollouts": args.rollouts, "questions": len(records), **length_bias(records)}
    if all("text" in t for r in records for t in r["trajectories"]):
        result["designs"] = all_designs(requests_of(records))
    columns = [
        "trajectories",
        "mean_tokens",
        *(f"corr_tokens_{f}" for f in FIELDS),
        "pairs",
        "shorter_has_higher_reward",
    ]
    print(f"{args.rollouts}: {len(records)} questions")
    print("| answers | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label in ("correct", "wrong"):
        print(f"| {label} | " + " | ".join(_fmt(result[label][c]) for c in columns) + " |")
    if "designs" in result:
        print("\nevery design re-scored on these groups:")
        print_designs(result["designs"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
