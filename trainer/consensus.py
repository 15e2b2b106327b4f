"""Arm-consensus labels (Regime W v2, design D): train without gold answers on what the arms agree on.

For every question of a scored rollouts file, the majority answer across its arms (ties to the smallest
number, as the service's label-free mode does) becomes the pseudo-label of a correctness reward: the
test-time-RL setting, where many differently-prompted arms should make the label better than one sample's.
The gold answer, where the file has one, is used only to report how often the label is right.

    looper consensus --rollouts-file runs/rollouts.jsonl --output-file runs/consensus_train.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

from shared_schemas.answers import majority_answer, parse_gold
from trainer.data import DataError, read_jsonl, write_jsonl


def consensus_labels(records: list[dict]) -> tuple[list[dict], dict]:
    """Training rows `{id, question, answer: "#### <majority>"}` and the labels' accuracy against gold.

    A question none of whose trajectories has an answer gets no row (counted as `no_answer`)."""
    rows, right, labelled_with_gold, no_answer, agreement = [], 0, 0, 0, []
    for record in records:
        answers = [t.get("answer") for t in record["trajectories"]]
        label = majority_answer(answers)
        if label is None:
            no_answer += 1
            continue
        agreement.append(sum(a == label for a in answers) / len(answers))
        rows.append({"id": record["question_id"], "question": record["question"], "answer": f"#### {label}"})
        gold = parse_gold(record["gold_answer"]) if record.get("gold_answer") else None
        if gold is not None:
            labelled_with_gold += 1
            right += label == gold
    stats = {
        "questions": len(records),
        "labelled": len(rows),
        "no_answer": no_answer,
        "with_gold": labelled_with_gold,
        "label_accuracy": right / labelled_with_gold if labelled_with_gold else None,
        "mean_majority_share": sum(agreement) / len(agreement) if agreement else None,
    }
    return rows, stats


def read_rollouts(path: str | Path) -> list[dict]:
    """The scored rollouts file's records, each checked for a list of trajectories."""
    records = read_jsonl(path, required=("question_id", "question"))
    for line_no, record in enumerate(records, 1):
        if not isinstance(record.get("trajectories"), list) or not record["trajectories"]:
            raise DataError(
                f"{path}, record {line_no} ({record['question_id']}): no trajectories list; pass a scored "
                "rollouts file as `looper rollouts` writes it"
            )
    return records


def write_consensus(rollouts_file: str | Path, output_file: str | Path) -> dict:
    """The labels as JSONL at output_file and their statistics beside it (<output>.stats.json)."""
    rows, stats = consensus_labels(read_rollouts(rollouts_file))
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    stats_path = out.with_suffix(".stats.json")
    stats_path.write_text(json.dumps({"rollouts_file": str(rollouts_file), **stats}, indent=2) + "\n")
    return stats
