"""The Regime W ablation's results: collected from the units' outputs, written as markdown, JSON and a plot,
and copied into experiments/README.md between its markers."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ablation_design import DESCRIPTION, DPO_ARMS, HEAD_TO_HEAD, MODELS, PREFS_OF, RL_ARMS

from looper_common.jsonl import read_rows

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
README_IMAGE = HERE / "results" / "regime_w_ablation.png"
RESULTS_START, RESULTS_END = "<!-- ablation-results:start -->", "<!-- ablation-results:end -->"


def oriented(comparison: dict, a: str, b: str) -> dict:
    """The pair (a, b) from a comparison, as a − b whichever order compare wrote it in."""
    for p in comparison["pairs"]:
        if (p["a"], p["b"]) == (a, b):
            return dict(p)
        if (p["a"], p["b"]) == (b, a):
            low, high = p["bootstrap_ci95_points"]
            return {**p, "a": a, "b": b, "diff_points": -p["diff_points"], "bootstrap_ci95_points": [-high, -low],
                    "only_a_correct": p["only_b_correct"], "only_b_correct": p["only_a_correct"]}  # fmt: skip
    raise KeyError(f"no pair {a} / {b} in the comparison")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rl_training(path: Path) -> dict | None:
    """Reward-service accuracy over the first and last tenth of the GRPO run's scored batches."""
    if not path.is_file():
        return None
    rows = read_rows(path)
    if not rows:
        return None
    k = max(1, len(rows) // 10)
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    return {"batches": len(rows), "accuracy_first": mean(rows[:k], "accuracy"), "accuracy_last": mean(rows[-k:], "accuracy"),
            "groups_without_signal": mean(rows, "groups_without_signal")}  # fmt: skip


def collect_results(ablation) -> dict:
    """The results of an `Ablation` (regime_w_ablation.py: not imported here, which imports this)."""
    c, w = ablation.config, ablation.work
    out = {"model": c.model, "smoke": c.smoke, "seeds": {}, "eval_sets": list(c.eval_sets), "work_dir": str(w),
           "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    for seed in c.seeds:
        d = ablation.seed_dir(seed)
        training = {}
        for arm in DPO_ARMS:
            m = _read_json(d / arm / "looper_manifest.json") or {}
            stats = _read_json(d / PREFS_OF[arm] / "pairs.stats.json") or {}
            training[arm] = {"global_step": m.get("global_step"), "train_loss": m.get("train_loss"),
                             "pairs": stats.get("pairs"), "pairs_by_type": stats.get("pairs_by_type")}  # fmt: skip
        for arm in RL_ARMS:
            m = _read_json(d / arm / "looper_manifest.json") or {}
            training[arm] = {"global_step": m.get("global_step"), "train_loss": m.get("train_loss"),
                             "service": _rl_training(d / arm / "rewards.jsonl")}  # fmt: skip
        sets = {}
        for set_name in c.eval_sets:
            comparison = json.loads((d / "compare" / set_name / "comparison.json").read_text())
            models = {m["name"]: m for m in comparison["models"]}
            rows = []
            for name in MODELS:
                m = models[name]
                row = {"model": name, "strict": m["strict"], "flexible": m["flexible"], "noise": m["noise"]["strict"],
                       "mean_completion_tokens": m["mean_completion_tokens"]}  # fmt: skip
                if name != "sft":
                    row["vs_sft"] = oriented(comparison, name, "sft")
                if name != "base":
                    row["vs_base"] = oriented(comparison, name, "base")
                rows.append(row)
            sets[set_name] = {
                "questions": comparison["questions"],
                "mode": comparison["mode"],
                "models": rows,
                "head_to_head": [{**oriented(comparison, a, b), "label": label} for a, b, label in HEAD_TO_HEAD],
                "report": str(d / "compare" / set_name / "report.md"),
                "chart": str(d / "compare" / set_name / "accuracy.png"),
            }
        out["seeds"][str(seed)] = {"training": training, "sets": sets}
    out["budgets"] = budgets(ablation)
    return out


def budgets(ablation) -> dict:
    """The resolved settings the paired arms share (from the units' configs)."""
    units = {u.name: u for u in ablation.units()}
    seed = f"seed-{ablation.config.seeds[0]}"
    sft, ro = units[f"{seed}/sft"].config, units[f"{seed}/rollouts"].config
    dpo, rl = units[f"{seed}/dpo_regime_w"].config, units[f"{seed}/grpo_regime_w"].config
    ev = units[f"{seed}/eval"].config["evals"][0]
    return {
        "sft": {"max_steps": sft.max_steps, "batch": sft.per_device_train_batch_size * sft.gradient_accumulation_steps,
                "learning_rate": sft.learning_rate, "lora_r": sft.lora_r},
        "rollouts": {"questions": ro.max_questions, "max_new_tokens": ro.max_new_tokens, "label_free": ro.label_free},
        "dpo": {"max_steps": dpo.max_steps, "pairs_per_step": dpo.per_device_train_batch_size * dpo.gradient_accumulation_steps,
                "learning_rate": dpo.learning_rate, "beta": dpo.beta, "lora_r": dpo.lora_r},
        "rl": {"algo": rl.algo, "max_steps": rl.max_steps, "num_generations": rl.num_generations,
               "completions_per_step": rl.per_device_train_batch_size * rl.gradient_accumulation_steps,
               "steps_per_generation": rl.steps_per_generation, "max_completion_length": rl.max_completion_length,
               "learning_rate": rl.learning_rate, "use_vllm": rl.use_vllm, "lora_r": rl.lora_r},
        "eval": {"engine": ev["engine"], "dtype": ev["dtype"], "max_new_tokens": ev["max_new_tokens"],
                 "repeat": ev["repeat"], "vllm_batch_invariant": ev["vllm_batch_invariant"]},
    }  # fmt: skip


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pts(x: float, digits: int = 1) -> str:
    return f"{x + 0.0:+.{digits}f}" if round(x, digits) else f"{0.0:+.{digits}f}"  # never "-0.0"


def _diff(p: dict | None) -> str:
    if p is None:
        return "–"
    low, high = p["bootstrap_ci95_points"]
    return f"{_pts(p['diff_points'])} [{_pts(low)}, {_pts(high)}], p={_p(p['mcnemar_p'])}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render_results(results: dict, image: str | None, heading: str = "#") -> str:
    h = heading
    b = results["budgets"]
    lines = [f"{h} Regime W ablation: results", ""]
    if results["smoke"]:
        lines += ["**SMOKE RUN** (tiny model, CPU, minuscule budgets, label-free rollouts): it shows that every "
                  "stage runs, not how the arms compare.", ""]  # fmt: skip
    s, r, d, g, e = b["sft"], b["rollouts"], b["dpo"], b["rl"], b["eval"]
    lines += [
        f"Model `{results['model']}`; training seed(s) {', '.join(results['seeds'])}; generated "
        f"{results['generated_at']} from `{results['work_dir']}`. Paired arms share every setting but the one "
        f"compared: SFT {s['max_steps']} steps x {s['batch']}; rollouts {r['questions']} questions x 11 arms; "
        f"DPO {d['max_steps']} steps x {d['pairs_per_step']} pairs (LR {d['learning_rate']}, beta {d['beta']}); "
        f"GRPO {g['max_steps']} steps x {g['completions_per_step']} completions ({g['num_generations']} per "
        f"prompt, <= {g['max_completion_length']} tokens, LR {g['learning_rate']}); eval greedy, {e['engine']}, "
        f"{e['dtype']}, <= {e['max_new_tokens']} tokens"
        f"{', VLLM_BATCH_INVARIANT=1' if e.get('vllm_batch_invariant') and e['engine'] == 'vllm' else ''}, "
        f"{e['repeat']} run(s) each{', all six models in one vLLM engine' if e['engine'] == 'vllm' else ''}.",
        "",
        "Accuracy is strict (an explicit final answer), in %, with Wilson 95% intervals. Differences are in "
        "points, A − B on the same questions, with a paired-bootstrap 95% interval and the exact McNemar p. "
        "p-values are not corrected for the number of comparisons (10 per eval set); the two head-to-head rows "
        "on Platinum are the primary comparisons, everything else is secondary.",
        "",
    ]
    if image:
        lines += [f"![accuracy and paired differences]({image})", ""]
    for seed, per_seed in results["seeds"].items():
        for set_name, s in per_seed["sets"].items():
            lines += [f"{h}# {set_name}, seed {seed}: {s['questions']} questions", ""]
            lines += ["| model | what | strict % | 95% CI | flexible % | noise floor | − sft: pts [95% CI], p "
                      "| − base: pts [95% CI], p |", "|---|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
            for row in s["models"]:
                ci = row["strict"]["ci95"]
                noise = "not measured" if row["noise"] is None else f"±{row['noise']['noise_floor_points']:.2f}"
                lines.append(
                    f"| {row['model']} | {DESCRIPTION[row['model']]} | {_pct(row['strict']['accuracy'])} "
                    f"| {_pct(ci[0])}–{_pct(ci[1])} | {_pct(row['flexible']['accuracy'])} | {noise} "
                    f"| {_diff(row.get('vs_sft'))} | {_diff(row.get('vs_base'))} |"
                )
            lines += ["", "| head to head (same budget) | A − B pts | 95% CI | only A right | only B right "
                      "| McNemar p | verdict |", "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
            for p in s["head_to_head"]:
                low, high = p["bootstrap_ci95_points"]
                lines.append(
                    f"| {p['label']} | {_pts(p['diff_points'], 2)} | {_pts(low, 2)} to {_pts(high, 2)} | {p['only_a_correct']} "
                    f"| {p['only_b_correct']} | {_p(p['mcnemar_p'])} | {p['verdict']} |"
                )
            lines += ["", f"Full report (every pair, per cleaning_status, settings): `{s['report']}`", ""]
        lines += [
            f"{h}# Training, seed {seed}",
            "",
            "| arm | optimizer steps | train loss | data |",
            "|---|---:|---:|---|",
        ]
        for arm, t in per_seed["training"].items():
            if arm in DPO_ARMS:
                data = f"{t['pairs']} pairs {t['pairs_by_type']}"
            else:
                sv = t.get("service")
                data = "–" if not sv else (
                    f"{sv['batches']} scored batches; sample accuracy {100 * sv['accuracy_first']:.1f}% (first 10%) -> "
                    f"{100 * sv['accuracy_last']:.1f}% (last 10%)"
                )  # fmt: skip
                if sv and arm == "grpo_regime_w":  # rewards.jsonl counts groups of equal *Regime W* rewards
                    data += f"; groups with all-equal rewards {100 * sv['groups_without_signal']:.1f}%"
            loss = "–" if t["train_loss"] is None else f"{t['train_loss']:.4f}"
            lines.append(f"| {arm} | {t['global_step']} | {loss} | {data} |")
        lines.append("")
    return "\n".join(lines)


def render_plot(results: dict, path: Path) -> Path:
    """Per seed and eval set: strict accuracy with Wilson CIs; each arm − sft and the two head-to-heads with
    their paired-bootstrap CIs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(seed, set_name, s) for seed, r in results["seeds"].items() for set_name, s in r["sets"].items()]
    fig = Figure(figsize=(14, 4.6 * len(panels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 2, squeeze=False, gridspec_kw={"width_ratios": [1.2, 1]})
    colors = {"base": "#8C8C8C", "sft": "#4C72B0", "dpo_regime_w": "#2A7F62", "dpo_correctness": "#9BC9B4",
              "grpo_regime_w": "#C44E52", "grpo_correctness": "#E8A3A5"}  # fmt: skip
    for row, (seed, set_name, s) in enumerate(panels):
        ax = axes[row][0]
        names = [m["model"] for m in s["models"]]
        acc = [100 * (m["strict"]["accuracy"] or 0) for m in s["models"]]
        err = [[a - 100 * m["strict"]["ci95"][0] for a, m in zip(acc, s["models"], strict=True)],
               [100 * m["strict"]["ci95"][1] - a for a, m in zip(acc, s["models"], strict=True)]]  # fmt: skip
        ax.bar(range(len(names)), acc, yerr=err, capsize=4, color=[colors[n] for n in names], ecolor="#333333")
        for x, (a, m) in enumerate(zip(acc, s["models"], strict=True)):
            ax.annotate(f"{a:.1f}", (x, 100 * m["strict"]["ci95"][1]), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylabel("strict accuracy (%)")
        ax.set_ylim(0, min(108, max(a + e for a, e in zip(acc, err[1], strict=True)) + 12))
        ax.set_title(f"{set_name}, seed {seed}: {s['questions']} questions (95% Wilson CI)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

        ax = axes[row][1]
        rows = [(f"{m['model']} − sft", m["vs_sft"]) for m in s["models"] if m["model"] not in ("base", "sft")]
        rows += [(f"{p['a']} − {p['b']}", p) for p in s["head_to_head"]]
        for k, (_, p) in enumerate(rows):
            y = len(rows) - 1 - k
            low, high = p["bootstrap_ci95_points"]
            d = p["diff_points"]
            significant = p["verdict"].startswith("significant")
            color = ("#2A7F62" if d > 0 else "#C44E52") if significant else "#777777"  # green up, red down
            ax.errorbar(d, y, xerr=[[d - low], [high - d]], fmt="o", color=color, capsize=4, ms=6)
            ax.annotate(f"{_pts(d)}, p={_p(p['mcnemar_p'])}", (d, y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=8)  # fmt: skip
        ax.axhline(len(s["head_to_head"]) - 0.5, color="#BBBBBB", lw=0.8, ls="--")
        ax.axvline(0, color="#333333", lw=0.8)
        ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel("difference, strict (points; 95% paired-bootstrap CI)")
        ax.set_title("arms vs SFT; below the line: Regime W vs correctness-only", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    if results["smoke"]:
        fig.suptitle("SMOKE RUN: tiny model, minuscule budgets (plumbing, not a result)", color="#C44E52")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_results(ablation, out: Path) -> dict:
    results = collect_results(ablation)
    out.mkdir(parents=True, exist_ok=True)
    image = render_plot(results, out / "ablation.png").name
    (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "ablation.md").write_text(render_results(results, image), encoding="utf-8")
    return {"markdown": str(out / "ablation.md"), "plot": str(out / image)}


def write_readme(results_dir: Path, readme: Path = README, image: Path = README_IMAGE) -> None:
    """Put the results (table + plot) between the markers of the experiment's README."""
    results = json.loads((results_dir / "ablation.json").read_text())
    if results["smoke"]:
        raise SystemExit("refusing to write a smoke run's numbers into the README")
    text = readme.read_text(encoding="utf-8")
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{readme}: no {RESULTS_START} ... {RESULTS_END} section to fill")
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results_dir / "ablation.png", image)
    body = render_results(results, os.path.relpath(image, readme.parent), heading="###")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    readme.write_text(f"{head}{RESULTS_START}\n{body}\n{RESULTS_END}{tail}", encoding="utf-8")
