"""bench/lora_serving_bench.py on a CPU (HF engine, tiny model): its three evals, results file and figures."""

import json

from helpers import eval_bench_inputs, load_script


def test_the_lora_serving_bench_runs_three_evals_and_records_the_generation_ratio(format_model, tmp_path):
    bench = load_script("bench/lora_serving_bench.py")
    questions, figures = eval_bench_inputs(tmp_path, 2, seed=3)
    out = tmp_path / "result.json"
    args = ["--model", str(format_model), "--data-file", str(questions), "--engine", "hf", "--max-new-tokens", "8",
            "--work-dir", str(tmp_path / "work"), "--out", str(out), "--figures", str(figures)]  # fmt: skip
    result = bench.main(args)

    assert [r["name"] for r in result["runs"]] == ["base", "lora", "merged"]
    assert all(r["questions"] == 2 and r["wall_s"] > 0 and r["generate_s"] > 0 for r in result["runs"])
    adapter = json.loads((tmp_path / "work" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and len(adapter["target_modules"]) == 7  # the SFT stage's shape
    # B = 0: the adapter answers as the base does, whichever way it is served
    assert len({r["outputs_sha256"] for r in result["runs"]}) == 1
    settings = json.loads((tmp_path / "work" / "merged" / "eval_settings.json").read_text())
    assert settings["merge_lora"] is True
    recorded = {f["name"]: f for f in json.loads(figures.read_text())}
    assert set(recorded) == {"kept", "platinum_eval_wall_s", "merged_lora_eval_speedup"}
    lora, merged = result["runs"][1:]
    assert recorded["merged_lora_eval_speedup"]["value"] == round(lora["generate_s"] / merged["generate_s"], 2)
    assert recorded["platinum_eval_wall_s"]["command"].startswith("python bench/lora_serving_bench.py --model")

    # the figures come back from the results file alone, unchanged
    again = tmp_path / "again.json"
    bench.main(["--model", "m", "--data-file", "d", "--from-results", str(out), "--figures", str(again)])
    assert json.loads(again.read_text()) == [f for f in json.loads(figures.read_text()) if f["name"] != "kept"]
