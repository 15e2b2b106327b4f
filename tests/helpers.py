"""Shared test pieces: hand-made scored rollouts (prefs, RFT), the loss SFT-style stages optimise, the app in-process,
the project's scripts (benches, docker/) loaded as modules."""

import importlib.util
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from looper_common.local_service import free_port
from reward_service.app import create_app
from reward_service.settings import ServiceSettings
from shared_schemas.models import RolloutRecord, RolloutTrajectory, ScoringWeights


def traj(arm: str, text: str, correct: bool, reward: float) -> RolloutTrajectory:
    return RolloutTrajectory(
        arm_name=arm,
        text=text,
        answer="12" if correct else "13",
        correct=correct,
        reward=reward,
        quality=0.5,
        coherence=0.5,
    )


def record(qid: str, trajectories: list[RolloutTrajectory], question: str | None = None) -> RolloutRecord:
    return RolloutRecord(
        question_id=qid,
        question=question or f"Tom has 3 bags of 4 apples ({qid}). How many apples?",
        gold_answer="#### 12",
        trajectories=trajectories,
        s_end=0.5,
        s_path=0.5,
        s_cf=0.5,
        s_wm=0.5,
        group_reward=1.2,
        label_source="gold",
        scorer_version="test",
        weights=ScoringWeights(),
        model="tiny",
        engine="hf",
    )


def completion_loss(model, tokenizer, rows) -> float:
    """Mean cross-entropy on the completion tokens only of {prompt, completion} rows."""
    losses = []
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        target = tokenizer(r["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([prompt + target]), labels=labels).loss.item())
    return sum(losses) / len(losses)


class InProcessService:
    """The real app under uvicorn in a thread of the test process (where a test must reach inside it: a scorer
    of its own, a patched LaTeX pool); open, on a free port."""

    def __init__(self, scorer=None, **settings):
        self.app = create_app(ServiceSettings(require_auth=False, **settings), scorer=scorer)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


ROOT = Path(__file__).resolve().parents[1]  # the project's root


def load_script(relative_path: str):
    """A script of the project (e.g. `bench/eval_wall_bench.py`), not a package module, loaded as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_bench_inputs(tmp_path: Path, questions: int, seed: int) -> tuple[Path, Path]:
    """An eval bench's inputs: generated questions, and a figures file holding one entry the bench must keep."""
    import json

    from trainer.data import generated_records, write_jsonl

    questions_file, figures = tmp_path / "questions.jsonl", tmp_path / "figures.json"
    write_jsonl(questions_file, generated_records(questions, seed=seed))
    figures.write_text(json.dumps([{"name": "kept", "value": 1}]))
    return questions_file, figures
