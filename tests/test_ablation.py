"""The Regime W ablation (experiments/regime_w_ablation.py) at its smoke size on the tiny format model:
every arm trained, all six models evaluated on both eval sets, compared, the results written; a rerun skips
everything and a killed arm resumes alone. Plus the guards that keep the arms' budgets paired."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trainer.pipeline import MANIFEST, PENDING

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "regime_w_ablation.py"
ONE_LEASE = ROOT / "experiments" / "regime_w_ablation_one_lease.yaml"
GPU_ARGS = ["--model", "models/qwen", "--gsm8k", "runs/src/gsm8k", "--platinum", "runs/src/platinum"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("regime_w_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_comparison(folder: Path, models: tuple, questions: int) -> None:
    assert (folder / "report.md").is_file() and (folder / "accuracy.png").stat().st_size > 0
    comparison = json.loads((folder / "comparison.json").read_text())
    assert [m["name"] for m in comparison["models"]] == list(models)
    assert comparison["questions"] == questions and comparison["mode"] == "strict"
    assert len(comparison["pairs"]) == len(models) * (len(models) - 1) // 2  # every arm vs sft and vs base too
    for p in comparison["pairs"]:
        low, high = p["bootstrap_ci95_points"]
        assert low <= p["diff_points"] <= high and 0.0 <= p["mcnemar_p"] <= 1.0 and p["verdict"]
    for m in comparison["models"]:
        low, high = m["strict"]["ci95"]
        assert m["strict"]["questions"] == questions and low <= m["strict"]["accuracy"] <= high
        assert m["noise"]["strict"] is not None  # the eval ran twice: the noise floor is measured


def test_the_smoke_ablation_runs_every_arm_and_resumes_only_what_was_killed(ablation, format_model, tmp_path):
    work = tmp_path / "ablation"
    args = ["--smoke", "--model", str(format_model), "--work-dir", str(work)]
    summary = ablation.main(args)
    models = ablation.MODELS
    assert models == ("base", "sft", "dpo_regime_w", "dpo_correctness", "grpo_regime_w", "grpo_correctness")
    assert summary["skipped"] == [] and summary["ran"][0] == "data" and summary["ran"][-1] == "results"
    # data, sft, rollouts, 2 prefs, 4 arms, one eval unit (6 models x 2 sets, one engine), 2 compares, results
    assert len(summary["ran"]) == 1 + 8 + 1 + 2 + 1 and "seed-0/eval" in summary["ran"]

    for set_name in ("platinum", "dev"):
        questions = len(rows(work / "data" / f"{set_name}.jsonl"))
        assert questions >= 5
        for model in models:
            folder = work / "seed-0" / "eval" / set_name / model
            summary_json = json.loads((folder / "summary.json").read_text())
            assert summary_json["name"] == model and summary_json["questions"] == questions
            assert 0.0 <= summary_json["accuracy_strict"] <= 1.0 and len(summary_json["answers_sha256"]) == 64
            assert len(rows(folder / "predictions.jsonl")) == questions
        # the eval unit's manifest records every model's resolved eval config: 6 models x 2 sets
        evals = json.loads((work / "seed-0" / "eval" / MANIFEST).read_text())["config"]["evals"]
        assert sorted(e["name"] for e in evals if e["data_file"].endswith(f"{set_name}.jsonl")) == sorted(models)
        check_comparison(work / "seed-0" / "compare" / set_name, models, questions)
    assert len(rows(work / "data" / "platinum.jsonl")) == ablation.SMOKE_ROWS["platinum"] - 1  # "bad" dropped

    # one set of rollouts feeds both DPO arms: the correctness-only pairs are the Regime W file's correctness pairs
    seed = work / "seed-0"
    regime_w = rows(seed / "prefs_regime_w" / "pairs.jsonl")
    correctness = rows(seed / "prefs_correctness" / "pairs.jsonl")
    assert {p["pair_type"] for p in correctness} == {"correctness"}
    assert {p["pair_type"] for p in regime_w} == {"correctness", "coherence"}
    assert [p for p in regime_w if p["pair_type"] == "correctness"] == correctness
    # paired arms: identical resolved configs but for the one field compared (and their paths)
    config = {
        a: json.loads((seed / a / MANIFEST).read_text())["config"] for a in (*ablation.DPO_ARMS, *ablation.RL_ARMS)
    }
    differ = lambda a, b: {k for k in config[a] if config[a][k] != config[b][k]}  # noqa: E731
    assert differ("dpo_regime_w", "dpo_correctness") == {"pairs_file", "output_dir"}
    assert differ("grpo_regime_w", "grpo_correctness") == {"reward", "output_dir"}
    assert config["grpo_correctness"]["reward"] == "correctness" and config["grpo_regime_w"]["max_steps"] == 2

    results = json.loads((work / "results" / "ablation.json").read_text())
    assert results["smoke"] and set(results["seeds"]["0"]["sets"]) == {"platinum", "dev"}
    for s in results["seeds"]["0"]["sets"].values():
        assert [r["model"] for r in s["models"]] == list(models)
        assert all("vs_sft" in r for r in s["models"] if r["model"] != "sft")
        assert [(p["a"], p["b"]) for p in s["head_to_head"]] == [
            ("dpo_regime_w", "dpo_correctness"),
            ("grpo_regime_w", "grpo_correctness"),
        ]
    markdown = (work / "results" / "ablation.md").read_text()
    assert "SMOKE RUN" in markdown and "## platinum, seed 0" in markdown and "## dev, seed 0" in markdown
    assert "DPO: Regime W pairs − correctness-only pairs" in markdown and "-0.0" not in markdown
    assert (work / "results" / "ablation.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="smoke"):
        ablation.write_readme(work / "results", tmp_path / "README.md")

    # a rerun skips everything; a GRPO arm killed half-way reruns alone (its evals' inputs did not change)
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob(MANIFEST)}
    assert ablation.main(args)["ran"] == []
    killed = seed / "grpo_correctness"
    manifest = json.loads((killed / MANIFEST).read_text())
    (killed / MANIFEST).unlink()
    (killed / PENDING).write_text(json.dumps({"hash": manifest["hash"]}) + "\n")
    assert ablation.main([*args, "--isolate"])["ran"] == ["seed-0/grpo_correctness"]  # in its own process
    assert {p for p, t in stamps.items() if p.stat().st_mtime_ns != t} == {killed / MANIFEST}


def test_the_gpu_config_is_paired_and_loadable_by_vllm_and_plans_its_time(ablation, capsys):
    config = ablation.config_from_args(ablation.parse_args(GPU_ARGS))
    assert config.engine == "vllm" and config.isolate and config.start_service and config.rl["use_vllm"]
    assert config.eval_sets == ["platinum", "dev"] and config.eval["repeat"] == 2
    ablation.main([*GPU_ARGS, "--work-dir", "/nonexistent/ablation", "--plan"])
    printed = capsys.readouterr().out
    assert "seed-0/grpo_correctness" in printed and "seed-0/eval " in printed and "6 models x dev+platinum" in printed
    assert "(more than one lease of 24 min)" in printed  # the full design: several leases' worth

    # the arms' own settings, the wiring and the seeds cannot be set from the config
    for bad in ("rl.reward=correctness", "prefs.pair_types=[correctness]", "dpo.seed=3", "eval.model=x"):
        with pytest.raises(SystemExit, match="set by the script"):
            ablation.config_from_args(ablation.parse_args([*GPU_ARGS, "--set", bad]))
    # a unit edited behind the script's back breaks the pairing check
    units = ablation.Ablation(config).units()
    next(u for u in units if u.name == "seed-0/grpo_regime_w").config.learning_rate = 1.0
    with pytest.raises(ValueError, match="must differ only in"):
        ablation.check_pairs(units)


def test_the_one_lease_config_cuts_only_budgets_and_plans_within_one_lease(ablation, capsys):
    """regime_w_ablation_one_lease.yaml extends the full design: the same models, arms, settings and eval sets
    (all of them), smaller budgets; its --plan estimate fits one lease on one H200."""
    lease_args = [*GPU_ARGS, "--config", str(ONE_LEASE), "--work-dir", "/nonexistent/one-lease"]
    full, lease = (ablation.config_from_args(ablation.parse_args(a)) for a in ([*GPU_ARGS], lease_args))
    cut = {"sft": {"max_steps", "save_steps"}, "rollouts": {"max_questions"}, "dpo": {"max_steps", "save_steps"},
           "rl": {"max_steps"}, "eval": {"repeat", "vllm_batch_invariant", "chunk_size"}}  # fmt: skip
    for block in ablation.BLOCKS:
        a, b = getattr(full, block), getattr(lease, block)
        assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == cut.get(block, set()), block
    assert lease.eval_sets == ["platinum", "dev"] and lease.engine == "vllm" and lease.isolate
    assert lease.work_dir != full.work_dir and lease.eval["repeat"] == 1

    units = ablation.make_ablation(lease).units()
    evals = next(u for u in units if u.stage == "eval").config["evals"]
    assert len(evals) == 12 and {e["max_questions"] for e in evals} == {None}  # all of Platinum and dev
    rows = ablation.plan(ablation.make_ablation(lease))
    assert sum(r["seconds"] for r in rows) / 60 <= sys.modules["ablation_estimate"].LEASE_MINUTES
    ablation.main([*lease_args, "--plan"])
    assert "(fits one lease of 24 min)" in capsys.readouterr().out
