"""Does a scored rollouts file pay for brevity? Reward against answer length, with correctness held fixed.

    python experiments/reward_vs_length.py runs/regime-w-ablation-one-lease/seed-0/rollouts/rollouts.jsonl

For correct and for wrong trajectories separately (correctness moves the reward most; holding it fixed leaves
what the rest of the reward does): the Pearson correlation of `completion_tokens` with the trajectory's
`reward`, `quality` and `coherence`, and, over every pair of trajectories of the same question and the same
correctness whose lengths and rewards differ, how often the shorter one has the higher reward (0.5: no
preference). Prints a table; `--json OUT` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import combinations
from pathlib import Path

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


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rollouts", help="a rollouts JSONL written by `looper rollouts`")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    records = [json.loads(line) for line in Path(args.rollouts).read_text().splitlines() if line.strip()]
    result = {"rollouts": args.rollouts, "questions": len(records), **length_bias(records)}
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
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
