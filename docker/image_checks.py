"""What `make image-test` (docker/image-test.sh) asks of a running reward service, from the host or from a
container on the compose network. Exits non-zero, saying why, on the first failed check.

    python docker/image_checks.py serve --url URL --token-file FILE --expect regime|stub
    python docker/image_checks.py rollouts --url URL --token-file FILE      # in the trainer image
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import httpx


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"check failed: {what}")


def serve(url: str, token: str, expect: str) -> None:
    from looper.samples import sample_group

    with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as http:
        for path in ("/healthz", "/readyz"):
            status = http.get(path).status_code
            check(status == 200, f"GET {path}: {status}")
        auth = {"Authorization": f"Bearer {token}"}
        arms = http.get("/v1/arms", headers=auth)
        check(arms.status_code == 200, f"GET /v1/arms: {arms.status_code} {arms.text[:200]}")
        names = [a["name"] for a in arms.json()["arms"]]
        group = sample_group(random.Random(1), "image-test-1", words=80, arms=names).model_dump(mode="json")
        scored = http.post("/v1/score", json=group, headers=auth)
        check(scored.status_code == 200, f"POST /v1/score: {scored.status_code} {scored.text[:300]}")
        body = scored.json()
        check(len(body["trajectories"]) == len(names), "one score per trajectory")
        scorer = f"{body.get('scorer')} {body['scorer_version']}"
        check(expect in scorer, f"scored by {scorer!r}, expected {expect!r}")
        refused = http.post("/v1/score", json=group)
        check(refused.status_code == 401, f"POST /v1/score without the token: {refused.status_code}, not 401")
    print(f"{url}: healthz/readyz 200, {len(names)} trajectories scored by {scorer}, 401 without token")


def rollouts(url: str, token_file: str) -> None:
    """Rollouts of a tiny random-weight model on the CPU, scored by the service: the trainer image's clients
    reach the service by its compose name with the token."""
    from looper.tiny_model import build_tiny_model
    from looper_common.jsonl import read_rows, write_jsonl
    from rollout_worker.worker import RolloutConfig, run_rollouts
    from trainer.data import generated_records

    work = Path(tempfile.mkdtemp())
    model = build_tiny_model(work / "tiny")
    write_jsonl(work / "questions.jsonl", generated_records(2, seed=1))
    output = work / "rollouts.jsonl"
    config = RolloutConfig(
        questions_file=str(work / "questions.jsonl"), output_file=str(output), model=str(model), engine="hf",
        service_url=url, token_file=token_file, max_questions=2, batch_size=2, max_new_tokens=8,
    )  # fmt: skip
    summary = run_rollouts(config)
    records = read_rows(output)
    check(summary["records"] == 2 and len(records) == 2, f"2 scored records, got {summary}")
    check(all(r["scorer_version"] for r in records), "every record names its scorer")
    print(f"rollouts: 2 questions x {len(records[0]['trajectories'])} arms scored by {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["serve", "rollouts"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--expect", default="regime", help="serve: a part of the scorer_version expected")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.url, Path(args.token_file).read_text().strip(), args.expect)
    else:
        rollouts(args.url, args.token_file)


if __name__ == "__main__":
    main()
