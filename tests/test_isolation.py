"""looper_common.isolation: a stage in a fresh process gives back its result and raises its error here."""

import operator

import pytest

from looper_common.isolation import run_isolated
from trainer.pipeline import Pipeline, build_config


def test_a_stage_in_its_own_process_returns_its_result_and_raises_its_error():
    assert run_isolated(operator.add, 2, 3) == 5
    with pytest.raises(RuntimeError, match="ValueError"):
        run_isolated(int, "not a number")


def test_variables_given_reach_the_child_only():
    import os

    assert run_isolated(os.getenv, "LOOPER_ISOLATION_PROBE", env={"LOOPER_ISOLATION_PROBE": "1"}) == "1"
    assert "LOOPER_ISOLATION_PROBE" not in os.environ
    assert run_isolated(os.getenv, "LOOPER_ISOLATION_PROBE") is None


def test_a_function_a_fresh_process_cannot_import_is_refused_with_what_to_pass(tmp_path, monkeypatch):
    def local(x):
        return x

    with pytest.raises(ValueError, match="module-level function"):
        run_isolated(local, 1)
    local.__module__ = "__main__"
    with pytest.raises(ValueError, match="importable by name"):
        run_isolated(local, 1)
    (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable in this process, not in the fresh one
    from only_here import double

    with pytest.raises(RuntimeError, match="not importable by name in a fresh process"):
        run_isolated(double, 1)


def test_the_pipeline_isolates_its_gpu_stages_when_it_runs_vllm(monkeypatch):
    """vLLM refuses to start while an earlier stage's engine still holds the GPU (found on an H200: the eval after
    GRPO colocate). `engine: vllm` therefore runs each GPU stage in its own process; `isolate` overrides."""
    seen = []
    monkeypatch.setattr("trainer.pipeline.run_isolated", lambda func, config: seen.append(func) or "isolated")
    gpu = Pipeline(build_config("gpu-small", {"model": "m"}))
    assert gpu.call(str, 1) == "isolated" and seen == [str]
    assert Pipeline(build_config("demo", {"model": "m"})).call(str, 1) == "1" and len(seen) == 1
    forced = Pipeline(build_config("demo", {"model": "m", "isolate": True}))
    assert forced.call(str, 1) == "isolated"
    off = Pipeline(build_config("gpu-small", {"model": "m", "isolate": False}))
    assert off.call(str, 1) == "1"
