"""`looper pipeline` end to end on the tiny format model: every stage against a service it starts itself,
then a rerun that skips everything, then one changed DPO setting that reruns DPO and what reads it only."""

import json

import pytest
from helpers import ROOT, load_script

from looper.cli import main
from trainer.pipeline import MANIFEST, PENDING, PRESETS, Pipeline, Unit, build_config, load_preset, run_pipeline

TRAIN = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, lora_r=4, lora_alpha=8, save_steps=1000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_values(model, work_dir) -> dict:
    return {
        "model": str(model),
        "work_dir": str(work_dir),
        "generated": 8,
        "generated_eval": 6,
        "seed": 11,  # questions on which some of the format model's answers agree (see test_rft)
        "start_service": True,
        "engine": "hf",
        "sft": {**TRAIN, "max_steps": 2, "learning_rate": 1e-4, "max_length": 256, "warmup_steps": 0},
        # label-free: the majority answer counts as correct, so the rollouts hold both correct and wrong arms
        "rollouts": {"max_questions": 8, "batch_size": 8, "max_new_tokens": 96, "dtype": "float32", "label_free": True},
        "dpo": {**TRAIN, "max_steps": 2, "learning_rate": 5e-3, "max_length": 256, "warmup_steps": 0,
                "zero_grad_steps": 0},
        "rl": {"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 4, "steps_per_generation": 1,
               "max_completion_length": 24, "lora_r": 4, "learning_rate": 1e-3, "save_steps": 1000,
               "service_retries": 1},
        "eval": {"max_new_tokens": 48, "dtype": "float32", "chunk_size": 8, "max_batch_size": 8},
        "compare": {"n_resamples": 200},
    }  # fmt: skip


def manifest_stamps(work) -> dict:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob(MANIFEST)}


def test_every_stage_runs_then_a_rerun_skips_and_a_change_reruns_only_what_follows(format_model, tmp_path, capsys):
    work = tmp_path / "pipe"
    summary = run_pipeline(build_config(values=tiny_values(format_model, work)))
    evals = [f"eval:generated_eval:{m}" for m in ("base", "sft", "dpo", "rl")]
    units = ["data", "sft", "rollouts", "prefs", "dpo", "rl", *evals, "compare:generated_eval"]
    assert summary["ran"] == units and summary["skipped"] == []
    assert (work / "data" / "generated_train.jsonl").is_file() and (work / "data" / "generated_eval.jsonl").is_file()
    for stage in ("sft", "dpo", "rl"):
        assert (work / stage / "adapter_config.json").is_file()
    assert (work / "rollouts" / "rollouts.jsonl").is_file() and (work / "prefs" / "pairs.jsonl").is_file()
    for model in ("base", "sft", "dpo", "rl"):
        assert (work / "eval" / "generated_eval" / model / "summary.json").is_file()
    # the set's four evals ran as one call (one engine with vLLM), each with its own manifest and its own time
    eval_manifests = [
        json.loads((work / "eval" / "generated_eval" / m / MANIFEST).read_text()) for m in ("base", "sft", "dpo", "rl")
    ]
    assert all(m["shared_engine"] == evals and m["seconds"] > 0 for m in eval_manifests)
    assert "window" not in json.loads((work / "eval" / "generated_eval" / "rl" / "summary.json").read_text())
    stamps = manifest_stamps(work)
    assert len(stamps) == len(units)
    dpo_manifest = json.loads((work / "dpo" / MANIFEST).read_text())
    assert dpo_manifest["config"]["learning_rate"] == 5e-3 and set(dpo_manifest["inputs"]) == {"sft", "prefs"}
    assert len(dpo_manifest["hash"]) == 64
    report = work / "compare" / "generated_eval" / "report.md"
    assert report.is_file() and (report.parent / "accuracy.png").is_file()
    comparison = json.loads((report.parent / "comparison.json").read_text())
    assert [m["name"] for m in comparison["models"]] == ["base", "sft", "dpo", "rl"]
    assert summary["reports"] == {"generated_eval": str(report)}

    # a rerun (through the CLI, with a new service port and token) skips every stage and starts no service
    args = ["pipeline", "--model", str(format_model), "--work-dir", str(work), "--config", str(tmp_path / "p.yaml")]
    values = tiny_values(format_model, work)
    (tmp_path / "p.yaml").write_text(json.dumps({k: v for k, v in values.items() if k not in ("model", "work_dir")}))
    capsys.readouterr()
    main(args)
    printed = capsys.readouterr().out
    assert "ran: -" in printed and "base" in printed and str(report) in printed
    assert manifest_stamps(work) == stamps
    assert json.loads((work / "pipeline_summary.json").read_text())["skipped"] == units

    # a new DPO learning rate reruns DPO, its eval and the comparison; nothing before it, nor RL
    main([*args, "--set", "dpo.learning_rate=2e-3"])
    after = json.loads((work / "pipeline_summary.json").read_text())
    assert after["ran"] == ["dpo", "eval:generated_eval:dpo", "compare:generated_eval"]
    changed = {k for k, v in manifest_stamps(work).items() if stamps[k] != v}
    assert changed == {f"dpo/{MANIFEST}", f"eval/generated_eval/dpo/{MANIFEST}", f"compare/generated_eval/{MANIFEST}"}
    assert json.loads((work / "dpo" / MANIFEST).read_text())["config"]["learning_rate"] == 2e-3

    # killed while its evals ran as one call: two had answered every question, but the call never returned to
    # write their manifests; the rerun continues both in one call, from their answers, and nothing else
    killed = {m: work / "eval" / "generated_eval" / m for m in ("sft", "rl")}
    answers = {}
    for model, folder in killed.items():
        manifest = json.loads((folder / MANIFEST).read_text())
        (folder / PENDING).write_text(json.dumps({"hash": manifest["hash"]}) + "\n")
        (folder / MANIFEST).unlink()
        answers[model] = (folder / "predictions.jsonl").stat().st_mtime_ns
    main([*args, "--set", "dpo.learning_rate=2e-3"])
    after = json.loads((work / "pipeline_summary.json").read_text())
    assert after["ran"] == ["eval:generated_eval:sft", "eval:generated_eval:rl"]  # compare: same inputs, skipped
    for model, folder in killed.items():
        assert (folder / "predictions.jsonl").stat().st_mtime_ns == answers[model] and not (folder / PENDING).exists()
        assert json.loads((folder / MANIFEST).read_text())["shared_engine"] == after["ran"]


def test_random_weights_get_labels_read_flexibly_and_the_reading_is_part_of_the_hash(tiny_model, tmp_path):
    """The 8B preset's stand-in at a tiny shape. Against gold, random weights get nothing right: no pair, and
    DPO stops saying what to set. Label-free, a question's majority answer is its label, but strictly read few
    arms have an answer at all; read flexibly (an arm's last number), more do. The reading is part of the
    scoring units' hash: changing it alone reruns the rollouts and what follows, not SFT."""
    from trainer.data import DataError

    work = tmp_path / "pipe"
    values = tiny_values(tiny_model, work)
    values["rollouts"] = {**values["rollouts"], "label_free": False}
    values["stages"] = ["data", "sft", "rollouts", "prefs", "dpo"]
    with pytest.raises(DataError, match="No arm of any question was correct.*label_free.*answer-mode flexible"):
        run_pipeline(build_config(values=values))
    stats = json.loads((work / "prefs" / "pairs.stats.json").read_text())
    assert stats["pairs"] == 0 and stats["label_sources"] == {"gold": 8}

    values["rollouts"]["label_free"] = True
    values["stages"] = ["data", "sft", "rollouts", "prefs"]
    run_pipeline(build_config(values=values))
    strict = json.loads((work / "prefs" / "pairs.stats.json").read_text())["label_sources"].get("majority", 0)

    values["answer_mode"] = "flexible"
    values["stages"] = ["data", "sft", "rollouts", "prefs", "dpo", "rl"]
    values["rl"] = {**values["rl"], "reward": "label_free"}
    summary = run_pipeline(build_config(values=values))
    assert summary["skipped"] == ["data", "sft"] and summary["ran"] == ["rollouts", "prefs", "dpo", "rl"]
    stats = json.loads((work / "prefs" / "pairs.stats.json").read_text())
    assert stats["label_sources"].get("majority", 0) > strict and stats["pairs"] > 0
    rollouts = json.loads((work / "rollouts" / MANIFEST).read_text())
    assert rollouts["service"] == {"stub": False, "scorer": None, "answer_mode": "flexible"}
    assert (work / "dpo" / "adapter_config.json").is_file() and (work / "rl" / "adapter_config.json").is_file()
    assert "service" not in json.loads((work / "sft" / MANIFEST).read_text())


def test_presets_and_overrides_merge_per_stage():
    demo = build_config("demo", {"model": "models/smol", "dpo": {"learning_rate": 1e-6}})
    assert demo.engine == "hf" and demo.generated > 0 and demo.start_service
    assert demo.dpo["learning_rate"] == 1e-6 and demo.dpo["max_steps"] == load_preset("demo")["dpo"]["max_steps"]
    big = build_config("h100-8b")
    assert big.model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" and big.quantization == "4bit"
    assert build_config("gpu-small").engine == "vllm"
    with pytest.raises(ValueError, match="unknown stage"):
        build_config("demo", {"model": "m", "stages": ["sft", "nope"]})
    with pytest.raises(ValueError, match="unknown pipeline field"):
        build_config("demo", {"model": "m", "learning_rate": 1.0})
    with pytest.raises(ValueError, match="generated steps 3-2"):
        build_config("demo", {"model": "m", "generated_min_steps": 3, "generated_max_steps": 2})


def test_a_killed_stage_continues_in_place_and_a_changed_one_starts_over(tmp_path):
    pipeline = Pipeline(
        build_config(values={"model": "m", "generated": 2, "generated_eval": 2, "work_dir": str(tmp_path)})
    )
    calls = []

    def work(fail: bool):
        calls.append(sorted(p.name for p in (tmp_path / "s").iterdir()))
        (tmp_path / "s" / "partial").write_text("x")
        if fail:
            raise KeyboardInterrupt("killed")

    def unit(config: dict, fail: bool) -> Unit:
        return Unit("s", "s", tmp_path / "s", config, [], lambda: work(fail), [tmp_path / "s" / "partial"])

    with pytest.raises(KeyboardInterrupt):
        pipeline.run_unit(unit({"lr": 1}, fail=True))
    assert not (tmp_path / "s" / MANIFEST).exists()
    pipeline.run_unit(unit({"lr": 1}, fail=False))  # same config: the partial output is kept
    assert calls[1] == ["partial", PENDING]
    pipeline.run_unit(unit({"lr": 1}, fail=False))
    assert pipeline.summary["skipped"] == ["s"] and len(calls) == 2
    pipeline.run_unit(unit({"lr": 2}, fail=False))  # changed: the directory starts empty
    assert calls[2] == [PENDING] and pipeline.summary["ran"] == ["s", "s"]


def test_named_presets_are_yaml_files_that_build_a_config(tmp_path):
    assert PRESETS == ("demo", "gpu-small", "h100-8b")
    for name in PRESETS:
        config = build_config(name, {"model": "some/model"})
        assert config.start_service and config.work_dir == f"runs/pipeline-{name}"
    assert load_preset("demo")["sft"]["learning_rate"] == 3e-4  # a float, not the string "3e-4"
    custom = tmp_path / "mine.yaml"
    custom.write_text("work_dir: runs/mine\ngenerated: 5\ngenerated_eval: 5\n")
    assert build_config(str(custom), {"model": "m"}).work_dir == "runs/mine"
    with pytest.raises(ValueError, match="unknown preset 'nope': one of demo, gpu-small, h100-8b or a YAML file"):
        load_preset("nope")


def test_the_8b_random_weights_config_cuts_steps_only_and_scores_label_free():
    """bench/h100_8b_random.yaml over the h100-8b preset: the step counts cut, the label strategy for random
    weights, everything else the preset's."""
    import yaml

    values = yaml.safe_load((ROOT / "bench" / "h100_8b_random.yaml").read_text())
    config = build_config("h100-8b", {**values, "model": "m", "gsm8k": "g", "platinum": "p"})
    units = {u.name: u.config for u in Pipeline(config).units()}
    assert config.answer_mode == "flexible" and config.quantization == "4bit" and config.engine == "vllm"
    assert units["rollouts"].label_free and units["rollouts"].max_questions == 64
    assert units["rl"].reward == "label_free" and units["rl"].use_vllm and units["rl"].gradient_checkpointing
    assert units["sft"].max_steps == 8 and units["sft"].lora_r == 64 and units["dpo"].max_steps == 8
    assert units["eval:platinum:base"].max_new_tokens == 1024 and units["eval:platinum:base"].max_questions is None


def test_a_units_folder_is_the_wiring_not_a_users_override(tmp_path):
    """A rerun deletes an unfinished unit's folder: an overridden output path must never become that folder."""
    work = tmp_path / "work"
    config = build_config("demo", {"model": "m", "work_dir": str(work),
                                   "prefs": {"output_file": "pairs.jsonl"}, "rollouts": {"output_file": "x.jsonl"}})  # fmt: skip
    units = {u.name: u for u in Pipeline(config).units()}
    assert units["prefs"].dir == work / "prefs" and units["rollouts"].dir == work / "rollouts"
    assert units["prefs"].config.output_file == "pairs.jsonl"  # the stage still writes where the user said
    assert units["sft"].dir == work / "sft" and units["sft"].outputs == [work / "sft" / "adapter_config.json"]


def test_the_pipelines_engine_reaches_grpo():
    """`engine: vllm` (the GPU presets) generates GRPO's rounds with vLLM too, not with plain `generate`."""
    rl = {name: {u.name: u for u in Pipeline(build_config(name, {"model": "m"})).units()}["rl"].config
          for name in ("demo", "gpu-small", "h100-8b")}  # fmt: skip
    assert not rl["demo"].use_vllm and rl["gpu-small"].use_vllm and rl["h100-8b"].use_vllm
    kept = build_config("gpu-small", {"model": "m", "rl": {"use_vllm": False}})
    assert not {u.name: u for u in Pipeline(kept).units()}["rl"].config.use_vllm  # an explicit setting wins


def test_the_pipeline_bench_reads_a_finished_run(format_model, tmp_path):
    """bench/pipeline_bench.py --summarize on a real (tiny) run: every unit's seconds, the eval accuracies, and
    GRPO's generating steps told from its optimizer-only steps by `steps_per_generation`."""
    bench = load_script("bench/pipeline_bench.py")
    work = tmp_path / "pipe"
    values = tiny_values(format_model, work)
    values["rl"] = {**values["rl"], "max_steps": 4, "steps_per_generation": 2, "per_device_train_batch_size": 2,
                    "num_generations": 4}  # fmt: skip
    values["eval"] = {**values["eval"], "max_questions": 2, "merge_lora": True}
    run_pipeline(build_config(values=values))
    with bench.GpuMemorySampler(tmp_path / "sampled.jsonl"):  # no NVML or GPU here: it samples nothing
        pass
    assert not (tmp_path / "sampled.jsonl").exists()
    # so here are the sampler's rows, one inside each unit's window (MiB = its index) and one after them all
    windows = bench.unit_windows(bench.read_manifests(work))
    rows = [{"t": (start + end) / 2, "used_mib": 1024 * (i + 1)} for i, (start, end) in enumerate(windows.values())]
    rows.append({"t": max(end for _, end in windows.values()) + 30, "used_mib": 999_999})
    (work / "gpu_memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps([{"name": "kept", "value": 1}]))
    result = bench.main(["--preset", "demo", "--summarize", "--work-dir", str(work),
                         "--out", str(tmp_path / "r.json"), "--figures", str(figures)])  # fmt: skip
    assert set(result["units_s"]) >= {"data", "sft", "rl", "eval:generated_eval:base", "eval:generated_eval:rl"}
    assert result["evals"]["generated_eval:base"]["questions"] == 2
    evals = [f"eval:generated_eval:{m}" for m in ("base", "sft", "dpo", "rl")]
    assert result["shared_engine"] == {unit: evals for unit in evals}  # the HF engine merges; they ran as one call
    assert set(result["peak_gpu_memory_gib"]) == set(windows) and windows["sft"][0] < windows["sft"][1]
    assert max(result["peak_gpu_memory_gib"].values()) < 900  # the sample after every unit is nobody's
    assert result["peak_gpu_memory_gib"]["data"] >= 1.0
    grpo = result["grpo"]
    assert grpo["rounds"] == 2 and grpo["prompts_per_round"] == 1 and grpo["use_vllm"] is False
    recorded = {f["name"]: f for f in json.loads(figures.read_text())}
    # not the headline preset: every name begins with the preset's; no Platinum eval in this run: no such figure
    stage_names = {f"demo_{unit.replace(':', '_')}_s" for unit in result["units_s"]}
    assert set(recorded) == {"kept", "demo_pipeline_wall_s", "demo_grpo_round_s", *stage_names}
    sft = recorded["demo_sft_s"]
    assert sft["value"] == result["units_s"]["sft"] and sft["setting"]["generation_tok_s"] is None
    assert sft["setting"]["peak_gpu_memory_gib"] == result["peak_gpu_memory_gib"]["sft"]
    base_eval = recorded["demo_eval_generated_eval_base_s"]["setting"]["generation_tok_s"]
    assert base_eval == result["generation_tok_s"]["eval:generated_eval:base"] > 0
    assert result["generation_tok_s"]["rollouts"] > 0

    # merge_lora's baseline: the SFT eval unit again with only merge_lora off, into a folder of its own (the HF
    # engine always generates from merged weights, so here the answers must be the same)
    baseline = bench.lora_baseline(work, "generated_eval", "sft")
    assert baseline["questions"] == 2 and baseline["same_outputs"] == 2 and baseline["lora_s"] > 0
    assert baseline["merged_correct_strict"] == baseline["lora_correct_strict"]
    settings = json.loads((work / "eval-lora" / "generated_eval" / "sft" / "eval_settings.json").read_text())
    assert settings["merge_lora"] is False and settings["model"] == str(work / "sft")
    assert bench.lora_baseline(work, "generated_eval", "nope") is None
    # --summarize with a baseline on record: the figure is the generation ratio (walls hold engine starts)
    (work / "lora_baseline.json").write_text(json.dumps(baseline))
    bench.main(["--preset", "demo", "--summarize", "--work-dir", str(work), "--out", str(tmp_path / "r2.json"),
                "--figures", str(figures)])  # fmt: skip
    speedup = {f["name"]: f for f in json.loads(figures.read_text())}["demo_merged_lora_eval_speedup"]
    assert speedup["value"] == round(baseline["lora_generate_s"] / baseline["merged_generate_s"], 2)
    assert speedup["baseline"]["value"] == baseline["lora_generate_s"]
