"""Trainer callbacks of every stage: the non-finite guard and structured metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

log = logging.getLogger("looper.guards")


class NonFiniteError(RuntimeError):
    pass


def _all_finite(tensors) -> bool:
    tensors = list(tensors)
    if not tensors:
        return True
    # one device sync for the whole model rather than one per parameter
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step: if any gradient is NaN/inf, drop all gradients so the step changes nothing.

    Optimizers skip parameters whose .grad is None, so weights and optimizer moments stay as they were.
    Past `max_skipped` such steps the run aborts with a clear message instead of limping on.
    """

    def __init__(self, max_skipped: int = 10):
        self.max_skipped = max_skipped
        self.skipped = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        if _all_finite(p.grad for p in params):
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        log.warning("non-finite gradient at step %d: step skipped (%d so far)", state.global_step + 1, self.skipped)
        if self.skipped > self.max_skipped:
            raise NonFiniteError(
                f"{self.skipped} optimizer steps had non-finite gradients (limit {self.max_skipped}); aborting. "
                "Lower the learning rate, train in fp32, or raise the limit."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["nonfinite_skipped"] = self.skipped


def assert_finite_weights(model) -> None:
    """Refuse to save: any trainable weight that is NaN/inf means the adapter is garbage."""
    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"refusing to save: non-finite weights in {len(bad)} tensors, e.g. {bad[0]}")


class JsonlMetrics(TrainerCallback):
    """Appends every log event (loss, grad norm, learning rate, ...) to a JSONL file, one line per step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N that was written whole. The trainer writes trainer_state.json last, so a run
    killed while saving leaves a newer folder without a readable one: resuming from it would fail."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s", path)
            continue
        return str(path)
    return None
