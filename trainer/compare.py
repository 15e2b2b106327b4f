"""`looper compare`: several evals side by side, with the statistics a difference needs before it means anything.

Per model: accuracy strict and flexible with Wilson 95% intervals, and its run-to-run noise floor (from
`looper eval --repeat 2`). Per pair of models, on the same questions: the exact McNemar test (two-sided
binomial on the discordant pairs) and a seeded paired-bootstrap interval of the accuracy difference, the
noise floor printed beside every difference. Per cleaning_status where the data has one. Output: a
Markdown report, a PNG bar chart with CI error bars, and the numbers as JSON.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from looper_common.jsonl import read_rows
from trainer.data import DataError
from trainer.evaluate import PREDICTIONS, SUMMARY

log = logging.getLogger("looper.compare")

MODES = ("strict", "flexible")
REQUIRED = ("id", "gold", "correct_strict", "correct_flexible")


class CompareError(DataError):
    """Evals that cannot be compared: the message says which files and how they differ."""


# --- statistics ---------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integer arithmetic until the one division


def paired_bootstrap(
    a: list[bool], b: list[bool], n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of mean(a) - mean(b), resampling questions (pairs kept together), seeded."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return bootstrap_mean_interval(diff, n_resamples, seed, level)


def bootstrap_mean_interval(
    values, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of the mean of a 1-D array, resampling its entries with replacement, seeded."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    block = max(1, 2_000_000 // len(values))  # bounded memory for large sets
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


# --- loading ------------------------------------------------------------------------------------------


@dataclass
class EvalRun:
    name: str
    path: Path
    rows: dict[str, dict]  # id -> per-question row, in file order
    summary: dict | None

    @property
    def ids(self) -> list[str]:
        return list(self.rows)

    def correct(self, ids: list[str], mode: str) -> list[bool]:
        return [bool(self.rows[i][f"correct_{mode}"]) for i in ids]

    def noise(self, mode: str) -> dict | None:
        repeat = (self.summary or {}).get("repeat")
        return repeat.get(mode) if repeat else None


def _prediction(line: str) -> dict:
    row = json.loads(line)
    missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return row


def load_run(path: str | Path, name: str | None = None) -> EvalRun:
    """An eval output dir (predictions.jsonl + summary.json) or a predictions JSONL file."""
    path = Path(path)
    if path.is_dir():
        predictions, summary_path = path / PREDICTIONS, path / SUMMARY
    else:
        predictions, summary_path = path, path.with_name(SUMMARY)
        if path.name != PREDICTIONS:  # a summary beside another file belongs to another eval
            summary_path = path.with_name(path.stem + ".summary.json")
    if not predictions.is_file():
        raise CompareError(f"{path}: no {PREDICTIONS} (pass an eval output dir or a predictions JSONL file)")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    rows: dict[str, dict] = {}
    try:
        parsed = read_rows(predictions, _prediction, "row of an eval predictions file")
    except DataError as exc:
        raise CompareError(str(exc)) from None
    for row in parsed:
        if row["id"] in rows:
            raise CompareError(f"{predictions}: id {row['id']!r} occurs twice")
        rows[row["id"]] = row
    if not rows:
        raise CompareError(f"{predictions}: no predictions")
    no_gold = [i for i, r in rows.items() if r["gold"] in (None, "")]
    if no_gold:
        raise CompareError(
            f"{predictions}: {len(no_gold)} of {len(rows)} questions have no gold answer "
            f"(e.g. {no_gold[:3]}); accuracy needs gold for every question"
        )
    default = (summary or {}).get("name") or (path.name if path.is_dir() else path.parent.name)
    return EvalRun(name or default, path, rows, summary)


def check_comparable(runs: list[EvalRun]) -> list[str]:
    """The common question ids (the first run's order); an error if any run covers other questions."""
    first = runs[0]
    ids = set(first.rows)
    for run in runs[1:]:
        other = set(run.rows)
        if other != ids:
            only_a, only_b = sorted(ids - other), sorted(other - ids)
            examples = (only_a + only_b)[:3]
            raise CompareError(
                f"{first.name} ({len(ids)} questions) and {run.name} ({len(other)} questions) cover different "
                f"questions: {len(only_a) + len(only_b)} ids differ ({len(only_a)} only in {first.name}, "
                f"{len(only_b)} only in {run.name}; e.g. {examples}). Compare evals of the same data file."
            )
        gold_differs = [i for i in ids if run.rows[i]["gold"] != first.rows[i]["gold"]]
        question_differs = [
            i
            for i in ids
            if "question" in run.rows[i]
            and "question" in first.rows[i]
            and run.rows[i]["question"] != first.rows[i]["question"]
        ]
        if gold_differs or question_differs:
            raise CompareError(
                f"{first.name} and {run.name} share ids but {len(gold_differs)} gold answers and "
                f"{len(question_differs)} questions differ: not the same data set"
            )
    return first.ids


def _unique_names(runs: list[EvalRun]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name}-{seen[run.name]}"
        else:
            seen[run.name] = 1


# --- the comparison -----------------------------------------------------------------------------------


def _acc(correct: list[bool]) -> dict:
    k, n = sum(correct), len(correct)
    low, high = wilson_interval(k, n)
    return {"correct": k, "questions": n, "accuracy": k / n if n else None, "ci95": [low, high]}


def pair_noise_points(a: EvalRun, b: EvalRun, mode: str) -> float | None:
    """The run-to-run noise floor of a difference a - b, in points: both models' floors added; None if either
    was not measured."""
    na, nb = a.noise(mode), b.noise(mode)
    if na is None or nb is None:
        return None
    return na["noise_floor_points"] + nb["noise_floor_points"]


def verdict(p: float, diff_points: float, noise_points: float | None, alpha: float = 0.05) -> str:
    if p >= alpha:
        return "not significant"
    if noise_points is None:
        return "significant (noise floor not measured)"
    if abs(diff_points) <= noise_points:
        return "within run-to-run noise"
    return "significant"


def compare_runs(
    runs: list[EvalRun], mode: str = "strict", n_resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> dict:
    if mode not in MODES:
        raise ValueError(f"mode must be strict or flexible, got {mode!r}")
    if len(runs) < 2:
        raise CompareError("compare needs at least two evals")
    _unique_names(runs)
    ids = check_comparable(runs)
    models = []
    for run in runs:
        s = run.summary or {}
        models.append(
            {
                "name": run.name,
                "path": str(run.path),
                **{m: _acc(run.correct(ids, m)) for m in MODES},
                "no_answer_strict": sum(run.rows[i].get("parsed_strict") is None for i in ids),
                "mean_completion_tokens": _mean([run.rows[i].get("completion_tokens") for i in ids]),
                "noise": {m: run.noise(m) for m in MODES},
                "noise_runs": ((s.get("repeat") or {}).get("runs")),
                "settings": {
                    k: s.get(k)
                    for k in (
                        "model",
                        "engine",
                        "dtype",
                        "device",
                        "max_batch_size",
                        "max_new_tokens",
                        "answers_sha256",
                    )
                },
            }
        )
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        ca, cb = a.correct(ids, mode), b.correct(ids, mode)
        only_a = sum(x and not y for x, y in zip(ca, cb, strict=True))
        only_b = sum(y and not x for x, y in zip(ca, cb, strict=True))
        diff = (sum(ca) - sum(cb)) / len(ids)
        low, high = paired_bootstrap(ca, cb, n_resamples, seed)
        p = mcnemar_exact(only_a, only_b)
        noise = pair_noise_points(a, b, mode)
        pairs.append(
            {
                "a": a.name,
                "b": b.name,
                "diff_points": 100 * diff,
                "bootstrap_ci95_points": [100 * low, 100 * high],
                "only_a_correct": only_a,
                "only_b_correct": only_b,
                "mcnemar_p": p,
                "noise_floor_points": noise,
                "verdict": verdict(p, 100 * diff, noise, alpha),
            }
        )
    statuses = sorted({r["cleaning_status"] for r in runs[0].rows.values() if r.get("cleaning_status")})
    by_status = {}
    for status in statuses:
        subset = [i for i in ids if runs[0].rows[i].get("cleaning_status") == status]
        by_status[status] = {run.name: _acc(run.correct(subset, mode)) for run in runs}
    return {
        "questions": len(ids),
        "mode": mode,
        "bootstrap": {"resamples": n_resamples, "seed": seed},
        "alpha": alpha,
        "data_sha256": sorted({(r.summary or {}).get("data_sha256") or "?" for r in runs}),
        "models": models,
        "pairs": pairs,
        "by_cleaning_status": by_status,
    }


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, int | float)]
    return sum(values) / len(values) if values else None


# --- report -------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def _noise_text(noise: dict | None, runs: int | None) -> str:
    if noise is None:
        return "not measured"
    return (
        f"±{noise['noise_floor_points']:.2f} pts ({noise['correct_flips']} correctness flips, "
        f"{noise['answers_differ']} answers differ, {runs} runs)"
    )


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render_markdown(result: dict, chart: str | None) -> str:
    mode = result["mode"]
    lines = [
        "# Evaluation comparison",
        "",
        f"{result['questions']} questions, the same set for every model; primary mode **{mode}** "
        "(strict: an explicit final answer; flexible: else the last number). Intervals are 95%: Wilson for "
        f"accuracy, a paired bootstrap ({result['bootstrap']['resamples']:,} resamples, seed "
        f"{result['bootstrap']['seed']}) for differences; p is the exact McNemar test. The noise floor is the "
        "largest accuracy change between identical reruns (`looper eval --repeat 2`); a difference within it "
        "is not a difference.",
        "",
    ]
    if chart:
        lines += [f"![accuracy with 95% CIs]({chart})", ""]
    lines += [
        "## Accuracy",
        "",
        "| model | strict | 95% CI | flexible | 95% CI | no strict answer | mean tokens | noise floor |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in result["models"]:
        tokens = "–" if m["mean_completion_tokens"] is None else f"{m['mean_completion_tokens']:.0f}"
        lines.append(
            f"| {m['name']} | {_pct(m['strict']['accuracy'])} ({m['strict']['correct']}) | {_ci(m['strict']['ci95'])} "
            f"| {_pct(m['flexible']['accuracy'])} ({m['flexible']['correct']}) | {_ci(m['flexible']['ci95'])} "
            f"| {m['no_answer_strict']} | {tokens} | {_noise_text(m['noise'][mode], m['noise_runs'])} |"
        )
    lines += [
        "",
        f"## Paired differences ({mode})",
        "",
        "| A vs B | A − B | 95% CI | only A right | only B right | McNemar p | noise floor | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["pairs"]:
        noise = "not measured" if p["noise_floor_points"] is None else f"±{p['noise_floor_points']:.2f} pts"
        low, high = p["bootstrap_ci95_points"]
        lines.append(
            f"| {p['a']} vs {p['b']} | {p['diff_points']:+.2f} pts | {low:+.2f} to {high:+.2f} "
            f"| {p['only_a_correct']} | {p['only_b_correct']} | {_p(p['mcnemar_p'])} | {noise} | {p['verdict']} |"
        )
    if result["by_cleaning_status"]:
        names = [m["name"] for m in result["models"]]
        lines += [
            "",
            f"## By cleaning_status ({mode})",
            "",
            "| status | questions | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for status, per_model in result["by_cleaning_status"].items():
            n = next(iter(per_model.values()))["questions"]
            cells = [f"{_pct(per_model[x]['accuracy'])} ({_ci(per_model[x]['ci95'])})" for x in names]
            lines.append(f"| {status} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Settings",
        "",
        "| model | source | engine | dtype | device | batch | max new tokens | answers sha256 |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for m in result["models"]:
        s = {k: ("–" if v is None else v) for k, v in m["settings"].items()}
        sha = s["answers_sha256"][:12] if s["answers_sha256"] != "–" else "–"
        lines.append(
            f"| {m['name']} | `{s['model']}` | {s['engine']} | {s['dtype']} | {s['device']} "
            f"| {s['max_batch_size']} | {s['max_new_tokens']} | `{sha}` |"
        )
    return "\n".join(lines) + "\n"


def render_chart(result: dict, path: Path) -> Path:
    """Accuracy bars (strict and flexible) with Wilson 95% error bars; the paired differences with their
    bootstrap CIs against the shaded noise floor; and accuracy per cleaning_status where the data has one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = result["models"]
    names = [m["name"] for m in models]
    statuses = list(result["by_cleaning_status"])
    widths = [2 + 1.2 * len(names), 4.5] + ([2 + 0.8 * len(statuses) * len(names)] if statuses else [])
    fig = Figure(figsize=(sum(widths) + 1, max(4.8, 1.8 + 0.5 * len(result["pairs"]))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    colors = ["#4C72B0", "#DD8452"]

    def bars(ax, groups: list[str], series: list[tuple[str, list[dict]]], title: str) -> None:
        width = 0.8 / len(series)
        for k, (label, blocks) in enumerate(series):
            xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
            heights = [100 * (b["accuracy"] or 0) for b in blocks]
            errors = [
                [max(0.0, h - 100 * b["ci95"][0]) for h, b in zip(heights, blocks, strict=True)],
                [max(0.0, 100 * b["ci95"][1] - h) for h, b in zip(heights, blocks, strict=True)],
            ]
            color = colors[k % len(colors)] if len(series) <= 2 else f"C{k}"
            ax.bar(xs, heights, width * 0.92, yerr=errors, capsize=4, label=label, color=color, ecolor="#333333")
            for x, h, b in zip(xs, heights, blocks, strict=True):  # the value above its error bar
                top = 100 * b["ci95"][1]
                ax.annotate(f"{h:.1f}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 108)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize=8, loc="upper left", frameon=False, ncols=min(len(series), 4))

    bars(
        axes[0],
        names,
        [(mode, [m[mode] for m in models]) for mode in MODES],
        f"Accuracy, {result['questions']} questions (95% Wilson CI)",
    )
    differences(axes[1], result)
    if statuses:
        per = result["by_cleaning_status"]
        labels = [f"{s}\n(n={next(iter(per[s].values()))['questions']})" for s in statuses]
        bars(
            axes[2],
            labels,
            [(name, [per[s][name] for s in statuses]) for name in names],
            f"By cleaning_status ({result['mode']})",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def differences(ax, result: dict) -> None:
    """A forest plot: each pair's accuracy difference with its bootstrap CI, the noise floor shaded."""
    pairs = result["pairs"]
    for row, p in enumerate(pairs):
        y = len(pairs) - 1 - row
        noise = p["noise_floor_points"]
        if noise:
            ax.fill_betweenx([y - 0.35, y + 0.35], -noise, noise, color="#BBBBBB", alpha=0.6, lw=0)
        low, high = p["bootstrap_ci95_points"]
        diff = p["diff_points"]
        color = "#2A7F62" if p["verdict"] == "significant" else "#777777"
        ax.errorbar(diff, y, xerr=[[diff - low], [high - diff]], fmt="o", color=color, capsize=4, ms=6)
        ax.annotate(
            f"{diff:+.1f} pts, p={_p(p['mcnemar_p'])}",
            (diff, y),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.axvline(0, color="#333333", lw=0.8)
    ax.set_yticks(range(len(pairs)), [f"{p['a']} − {p['b']}" for p in reversed(pairs)], fontsize=8)
    ax.set_ylim(-0.7, len(pairs) - 0.3)
    ax.set_xlabel(f"accuracy difference, {result['mode']} (points)")
    ax.set_title("Paired differences (95% bootstrap CI;\ngrey: run-to-run noise floor)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def write_report(result: dict, out_dir: str | Path) -> dict:
    """report.md, accuracy.png (when matplotlib is installed) and comparison.json in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = None
    try:
        chart = render_chart(result, out / "accuracy.png").name
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install 'looper-math[train]')")
    report = out / "report.md"
    report.write_text(render_markdown(result, chart), encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    return {"report": str(report), "chart": str(out / chart) if chart else None, "json": str(out / "comparison.json")}


def run_compare(
    paths: list[str],
    out_dir: str | Path,
    names: list[str] | None = None,
    mode: str = "strict",
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    if names and len(names) != len(paths):
        raise CompareError(f"{len(names)} names for {len(paths)} evals")
    runs = [load_run(p, names[k] if names else None) for k, p in enumerate(paths)]
    result = compare_runs(runs, mode=mode, n_resamples=n_resamples, seed=seed, alpha=alpha)
    result["files"] = write_report(result, out_dir)
    return result


def format_result(result: dict) -> str:
    """The accuracy and pair lines for the terminal."""
    mode = result["mode"]
    other = "flexible" if mode == "strict" else "strict"
    lines = [f"{result['questions']} questions, mode {mode}"]
    for m in result["models"]:
        noise = m["noise"][mode]
        floor = "noise n/a" if noise is None else f"noise ±{noise['noise_floor_points']:.2f} pts"
        lines.append(
            f"  {m['name']:<24} {_pct(m[mode]['accuracy']):>6}  CI {_ci(m[mode]['ci95'])}  "
            f"({other} {_pct(m[other]['accuracy'])})  {floor}"
        )
    for p in result["pairs"]:
        noise = "n/a" if p["noise_floor_points"] is None else f"±{p['noise_floor_points']:.2f}"
        low, high = p["bootstrap_ci95_points"]
        lines.append(
            f"  {p['a']} - {p['b']}: {p['diff_points']:+.2f} pts [{low:+.2f}, {high:+.2f}]  "
            f"McNemar p={_p(p['mcnemar_p'])}  noise {noise}  -> {p['verdict']}"
        )
    lines.append(f"report: {result['files']['report']}")
    return "\n".join(lines)
