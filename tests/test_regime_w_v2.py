"""The Regime W v2 experiment (experiments/regime_w_v2.py) at its smoke size on the tiny format model: every
design trained over two seeds against one served scorer per arm, the evals recorded as small per-question
records, the records of two leases pooled; a rerun skips everything; the guards that keep the arms paired."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from trainer.pipeline import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "regime_w_v2.py"
GPU_ARGS = ["--model", "models/qwen", "--gsm8k", "runs/src/gsm8k", "--platinum", "runs/src/platinum"]
ARMS = ("correctness", "v2", "v2_modulated", "random_tiebreak", "consensus", "probe_variants")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def v2():
    spec = importlib.util.spec_from_file_location("regime_w_v2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def smoke_args(model: Path, root: Path, *extra: str) -> list[str]:
    return ["--smoke", "--model", str(model), "--work-dir", str(root / "work"), "--records-dir",
            str(root / "records"), "--results-file", str(root / "results.json"), *extra]  # fmt: skip


def test_the_smoke_experiment_trains_every_design_records_and_pools_the_seeds(v2, format_model, tmp_path):
    args = smoke_args(format_model, tmp_path)
    summary = v2.main(args)
    work = tmp_path / "work"
    per_seed = [f"seed-{s}/{a}" for s in (0, 1) for a in ARMS] + ["seed-0/eval", "seed-1/eval"]
    assert set(summary["ran"]) == {"data", "sft", "questions", "rollouts", "consensus", "variants", "eval-shared",
                                   *per_seed}  # fmt: skip
    assert summary["skipped"] == []

    # the arms differ in their reward fields only (and their paths); the consensus arm in its labels too
    config = {a: json.loads((work / "seed-0" / a / MANIFEST).read_text())["config"] for a in ARMS}
    differ = lambda a, b: {k for k in config[a] if config[a][k] != config[b][k]}  # noqa: E731
    assert differ("v2", "correctness") == {"reward", "output_dir"}
    assert differ("random_tiebreak", "correctness") == {"reward", "scorer", "output_dir"}
    assert differ("v2_modulated", "correctness") == {"advantage_modulation", "output_dir"}
    assert differ("consensus", "correctness") == {"train_file", "output_dir"}
    assert differ("probe_variants", "correctness") == {"variants_file", "output_dir"}
    variants = json.loads((work / "variants" / "variants.stats.json").read_text())
    assert variants["questions_with_variants"] == 8 and variants["paraphrases"] == 8 and variants["twins_made"] >= 1
    trained = json.loads((work / "seed-0" / "probe_variants" / "looper_manifest.json").read_text())["variants"]
    assert trained["groups"] >= 1  # the dynamic sampler watched every round
    assert config["correctness"]["scale_rewards"] == "batch" and config["correctness"]["loss_type"] == "dapo"
    seed_1 = json.loads((work / "seed-1" / "v2" / MANIFEST).read_text())["config"]
    assert {k for k in seed_1 if seed_1[k] != config["v2"][k]} == {"seed", "output_dir"}
    # the two scorers the arms name were served, each by its own `looper serve`
    assert (work / "service" / "service.log").is_file() and (work / "service-random_tiebreak" / "token").is_file()
    labels = [json.loads(x) for x in (work / "consensus" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 8 and all(row["answer"].startswith("#### ") for row in labels)

    records = tmp_path / "records"
    lease = json.loads((work / "sft" / "stage_manifest.json").read_text())["finished_at"]
    lease = lease.replace(":", "").replace("-", "")
    names = sorted(p.name for p in records.iterdir())
    expected = {f"seed-{s}-{a}.json" for s in (0, 1) for a in ARMS}
    assert set(names) == expected | {f"{lease}-base.json", f"{lease}-sft.json", f"{lease}-consensus-labels.json",
                                     f"{lease}-variants-labels.json"}  # fmt: skip
    record = json.loads((records / "seed-1-v2.json").read_text())
    assert record["lease"] == lease and record["seed"] == 1 and record["settings"]["scorer"] == "regime_w_v2"
    questions = len((work / "data" / "platinum.jsonl").read_text().splitlines())
    platinum = record["eval"]["platinum"]
    assert len(platinum["ids"]) == len(platinum["strict"]) == len(platinum["gold"]) == questions
    assert set(platinum["strict"]) <= {"0", "1"} and record["training"]["steps"] == 1
    assert str(tmp_path) not in (records / f"{lease}-consensus-labels.json").read_text()  # no machine paths
    assert str(tmp_path) not in (records / "seed-0-probe_variants.json").read_text()

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["smoke"] and results["leases"] == [lease] and set(results["arms"]) == set(ARMS)
    pooled = results["pooled"]["platinum"]
    assert set(pooled) == {f"{a} - correctness" for a in ARMS[1:]} | {f"{a} - sft" for a in ARMS}
    for key, comparison in pooled.items():
        assert comparison["seeds"] == [0, 1] and len(comparison["per_seed"]) == 2, key
        p = comparison["pooled"]
        assert p["n_seeds"] == 2 and p["n_questions"] == questions and 0.0 <= p["p"] <= 1.0
        assert p["ci"][0] <= p["diff_pts"] <= p["ci"][1]
        assert str(tmp_path) not in json.dumps(comparison)

    # a rerun skips every unit; the records stay the same
    before = {p.name: p.read_text() for p in records.iterdir()}
    assert v2.main(args)["ran"] == []
    assert {p.name: p.read_text() for p in records.iterdir()} == before

    # a second lease (a fresh work dir, its own SFT) trains seed 2 of two arms; `results` pools both leases
    second = tmp_path / "lease-2"
    second.mkdir()
    shutil.copytree(records, second / "records")
    summary = v2.main(smoke_args(format_model, second, "--seeds", "2", "--arms", "correctness,v2"))
    assert (
        "rollouts" not in summary["ran"] and "seed-2/v2" in summary["ran"] and "seed-2/consensus" not in summary["ran"]
    )
    results = json.loads((second / "results.json").read_text())
    assert len(results["leases"]) == 2 and sorted(results["arms"]["v2"]["seeds"]) == ["0", "1", "2"]
    assert results["pooled"]["platinum"]["v2 - correctness"]["seeds"] == [0, 1, 2]
    assert results["pooled"]["platinum"]["v2_modulated - correctness"]["seeds"] == [0, 1]
    # each arm seed is compared with the SFT of the lease that trained it
    assert results["pooled"]["platinum"]["v2 - sft"]["pooled"]["n_seeds"] == 3

    # a lease that trains an arm seed already recorded by another lease is refused, not overwritten
    clash = tmp_path / "lease-3"
    clash.mkdir()
    shutil.copytree(records, clash / "records")
    with pytest.raises(RuntimeError, match="ran it again"):
        v2.main(smoke_args(format_model, clash, "--seeds", "0", "--arms", "correctness"))


def test_results_alone_need_only_the_records(v2, tmp_path):
    with pytest.raises(SystemExit, match="no records"):
        v2.main(["--stages", "results", "--records-dir", str(tmp_path / "none"), "--results-file", str(tmp_path / "r")])


def test_the_gpu_config_pairs_the_arms_and_refuses_what_would_unpair_them(v2):
    config = v2.config_from_args(v2.parse_args(GPU_ARGS))
    assert set(config.arms) == set(ARMS) and config.seeds == [0, 1, 2] and config.engine == "vllm"
    assert config.rl["scale_rewards"] == "batch" and config.rl["max_steps"] == 100 and config.rl["use_vllm"]
    assert config.needs_consensus and config.eval["repeat"] == 1
    units = {u.name: u for u in v2.make_experiment(config).units()}
    assert {f"seed-{s}/{a}" for s in (0, 1, 2) for a in ARMS} <= set(units)
    one = v2.config_from_args(v2.parse_args([*GPU_ARGS, "--seeds", "1", "--arms", "correctness,v2"]))
    assert not one.needs_consensus and one.selected_arms == ["correctness", "v2"]
    names = {u.name for u in v2.make_experiment(one).units()}
    assert "rollouts" not in names and "seed-1/v2" in names and "seed-1/v2_modulated" not in names

    for bad, message in (
        (["--arms", "v3"], "not an arm"),
        (["--seeds", "0,0"], "distinct"),
        (["--seeds", "zero"], "integers"),
        (["--stages", "train"], "unknown stage"),
        (["--set", "rl.seed=3"], "set per arm or by the script"),
        (["--set", "rl.scorer=regime_w_v1"], "set per arm or by the script"),
        (["--set", "nope"], "BLOCK.FIELD=VALUE"),
        (["--set", "rl.scale_rewards=groups"], "scale_rewards"),
    ):
        with pytest.raises(SystemExit, match=message):
            v2.make_experiment(v2.config_from_args(v2.parse_args([*GPU_ARGS, *bad])))
    with pytest.raises(SystemExit, match="model and gsm8k are required"):
        v2.config_from_args(v2.parse_args([]))


def test_an_arm_that_sets_more_than_its_reward_is_refused(v2, tmp_path):
    import yaml

    values = yaml.safe_load((ROOT / "experiments" / "regime_w_v2.yaml").read_text())
    values["arms"]["v2_longer"] = {"reward": "regime_w", "scorer": "regime_w_v2", "max_completion_length": 512}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit, match="v2_longer: max_completion_length is not an arm's field"):
        v2.config_from_args(v2.parse_args([*GPU_ARGS, "--config", str(config)]))
