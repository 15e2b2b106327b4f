"""One shard of a data-parallel rollout run: a child process the parent (`rollout_worker.parallel`) starts.

It runs the single-process worker on its share of the questions into its own shard file, which the parent
merges; kept apart from the parent's module so that the worker and the parent never import each other.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

from rollout_worker.parallel import lock_shard, raw_records, shard_path, shard_questions, sidecar
from rollout_worker.worker import RolloutConfig, build_engine, load_questions, run_rollouts

log = logging.getLogger("looper.rollouts")


def run_shard(config, k: int, n: int, merged_dir: str | None = None) -> dict:
    """Shard k of n: the single-process worker on its questions, minus those already merged into the output.
    `merged_dir`: the run's adapter folded into its base by the parent (merge_lora), loaded as it is."""
    output = Path(config.output_file)
    path = shard_path(output, k, n)
    done = {qid for qid, _ in raw_records(output)}
    questions = [q for q in shard_questions(load_questions(config), k, n) if q["id"] not in done]
    handle = lock_shard(path)
    try:
        # this engine's share of a GPU it may share with engines_per_gpu - 1 others
        memory = config.gpu_memory_utilization / config.engines_per_gpu
        config = replace(
            config, output_file=str(path), data_parallel_size=1, engines_per_gpu=1, gpu_memory_utilization=memory
        )
        log.info("shard %d of %d: building its engine", k, n)
        engine = build_engine(config, merged_dir)
        log.info("shard %d of %d: engine built", k, n)
        sidecar(path, ".ready").touch()  # the next engine of this GPU may start profiling its memory
        summary = run_rollouts(config, engine, questions=questions)
        sidecar(path, ".summary.json").write_text(json.dumps(summary) + "\n")
        return summary
    finally:
        handle.close()


def _stop_own_group(signum, frame) -> None:
    # SIGTERM (from the parent, or its death): this process and vLLM's engine process go down together
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one shard of a data-parallel rollout run (started by the worker)")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--config", required=True, help="the run's RolloutConfig as JSON")
    parser.add_argument("--merged-dir", help="the run's LoRA adapter folded into its base (merge_lora)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.getpgid(0) == os.getpid():  # leading a session of its own (as the parent starts it)
        signal.signal(signal.SIGTERM, _stop_own_group)
    summary = run_shard(RolloutConfig(**json.loads(args.config)), args.shard, args.shards, args.merged_dir)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
