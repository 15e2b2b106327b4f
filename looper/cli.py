"""`looper`: one command line over the project's library functions."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from looper_common.token import TOKEN_ENV, TokenFileError, read_token


def service_settings(args: argparse.Namespace):
    """ServiceSettings from flags and the environment; a clear message instead of a traceback."""
    import yaml
    from pydantic import ValidationError

    from reward_service.settings import ServiceSettings

    try:
        token = None if args.insecure_no_auth else read_token(args.token_file)
    except TokenFileError as exc:
        raise SystemExit(f"looper serve: {exc}") from None
    fields = {
        "require_auth": not args.insecure_no_auth,
        "token": token,
        "stub": args.stub,
        "scorer": args.scorer,
        "path_mode": args.path_mode,
        "embedding_model": args.embedding_model,
        "embedding_device": args.embedding_device,
        "max_body_bytes": args.max_body_bytes,
        "max_group_size": args.max_group_size,
        "answer_budget_s": args.answer_budget,
        "answer_mode": args.answer_mode,
        "max_text_chars": args.max_text_chars,
        "allow_label_free_singletons": args.allow_label_free_singletons,
    }
    if args.weights:
        path = Path(args.weights)
        if not path.is_file():
            raise SystemExit(f"looper: weights file {args.weights} does not exist")
        fields["weights"] = yaml.safe_load(path.read_text()) or {}
    try:
        return ServiceSettings(**fields)
    except ValidationError as exc:
        messages = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"looper serve: {messages}") from None


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from reward_service.app import create_app

    settings = service_settings(args)
    if not settings.require_auth:
        logging.getLogger("looper").warning("serving WITHOUT authentication (--insecure-no-auth)")
    server = {"log_level": args.log_level, "access_log": args.access_log, "timeout_graceful_shutdown": 10}
    from reward_service.workers import bind_socket, serve_workers

    try:
        if args.workers > 1:
            raise SystemExit(serve_workers(lambda: create_app(settings), args.workers, args.host, args.port, **server))
        # bound here, not by uvicorn, so a taken port is one clear line (uvicorn logs errno 98 and exits 3)
        sock = bind_socket(args.host, args.port, reuse_port=False)
    except OSError as exc:
        raise SystemExit(f"looper serve: cannot listen on {args.host}:{args.port}: {port_problem(exc)}") from None
    uvicorn.Server(uvicorn.Config(create_app(settings), host=args.host, port=args.port, **server)).run(sockets=[sock])


def port_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use (another looper serve?): stop that process or pass another --port"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): pass --port 1024 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface has that address: pass --host 127.0.0.1 or 0.0.0.0"
    return exc.strerror or str(exc)


def cmd_schema(args: argparse.Namespace) -> None:
    from shared_schemas import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(json_schemas())} JSON Schemas to {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from looper.demo import run_demo

    run_demo(stub=args.stub, port=args.port)


def cmd_data(args: argparse.Namespace) -> None:
    from trainer.data import prepare_data

    manifest = prepare_data(
        args.out,
        gsm8k=args.gsm8k,
        platinum=args.platinum,
        generated=args.generated,
        generated_eval=args.generated_eval,
        generated_min_steps=args.generated_min_steps,
        generated_max_steps=args.generated_max_steps,
        dev_fraction=args.dev_fraction,
        seed=args.seed,
    )
    for name, info in manifest["files"].items():
        print(f"{name:>16}: {info['rows']:>6} rows  {Path(args.out) / (name + '.jsonl')}")


def cmd_sft(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.sft import SFTStageConfig, run_sft

    print(f"adapter saved to {run_sft(config_from_args(SFTStageConfig, args))}")


def cmd_merge(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.merge import MergeConfig, merge_adapter

    print(f"merged checkpoint saved to {merge_adapter(config_from_args(MergeConfig, args))}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def cmd_rollouts(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from rollout_worker.worker import RolloutConfig, run_rollouts

    summary = run_rollouts(config_from_args(RolloutConfig, args))
    print(json.dumps(summary))


def cmd_prefs(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.prefs import PrefsConfig, run_prefs, stats_path

    config = config_from_args(PrefsConfig, args)
    stats = run_prefs(config)
    keys = ("pairs", "pairs_by_type", "correctness_share", "questions_with_pairs", "questions_without_pairs")
    print(f"pairs: {config.output_file}  stats: {stats_path(config.output_file)}")
    print(json.dumps({k: stats[k] for k in keys}))


def cmd_dpo(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.dpo import DPOStageConfig, run_dpo

    print(f"adapter saved to {run_dpo(config_from_args(DPOStageConfig, args))}")


def cmd_rft(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.rft import RFTStageConfig, expert_iteration, run_rft

    config = config_from_args(RFTStageConfig, args)
    if config.expert_iteration:
        adapters = expert_iteration(config)
        print(
            f"{len(adapters)} rounds; last adapter {adapters[-1]}; summary {Path(config.output_dir) / 'expert_iteration.json'}"
        )
    else:
        print(f"adapter saved to {run_rft(config)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from trainer.evaluate import main

    main(args)  # one --model as ever; --model repeated: one engine, OUTPUT_DIR/NAME per model


def cmd_compare(args: argparse.Namespace) -> None:
    from trainer.compare import format_result, run_compare

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = run_compare(
        args.runs, args.out, names=names, mode=args.mode, n_resamples=args.bootstrap, seed=args.seed, alpha=args.alpha
    )
    print(format_result(result))


def arm_spec(value: str) -> tuple[str, list[str]]:
    """NAME=DIR[,DIR...] -> (NAME, [DIR, ...])."""
    name, sep, dirs = value.partition("=")
    paths = [d.strip() for d in dirs.split(",") if d.strip()]
    if not sep or not name.strip() or not paths:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=DIR[,DIR...] (one eval dir per seed)")
    return name.strip(), paths


def cmd_compare_seeds(args: argparse.Namespace) -> None:
    from trainer.compare import CompareError
    from trainer.pooled import pooled_comparison, render_pooled_markdown, write_pooled

    runs: dict[str, list[str]] = {}
    for name, paths in args.arm:
        if name in runs:
            raise CompareError(f"arm {name!r} given twice: pass each arm once, its seeds comma-separated")
        runs[name] = paths
    result = pooled_comparison(runs, args.baseline, mode=args.mode, n_resamples=args.bootstrap, seed=args.seed)
    files = write_pooled(result, args.out)
    print(render_pooled_markdown(result), end="")
    print(f"wrote {files['markdown']} and {files['json']}")


def cmd_consensus(args: argparse.Namespace) -> None:
    from trainer.consensus import write_consensus

    stats = write_consensus(args.rollouts_file, args.output_file)
    accuracy = "-" if stats["label_accuracy"] is None else f"{100 * stats['label_accuracy']:.1f}%"
    print(f"{stats['labelled']} of {stats['questions']} questions labelled (label accuracy against gold: {accuracy})"
          f" -> {args.output_file}")  # fmt: skip


def cmd_variants(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.variants import VariantsConfig, write_variants

    stats = write_variants(config_from_args(VariantsConfig, args))
    print(f"{stats['questions_with_variants']} of {stats['questions']} questions: {stats['paraphrases']} paraphrases, "
          f"{stats['twins_made']} of {stats['twins_tried']} counterfactual twins verified "
          f"(dropped: {stats['twins_dropped'] or '-'}) -> {args.output_file}")  # fmt: skip


def cmd_rl(args: argparse.Namespace) -> None:
    from looper_common.config import config_from_args
    from trainer.rl import RLStageConfig, run_rl

    print(f"adapter saved to {run_rl(config_from_args(RLStageConfig, args))}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    from trainer.pipeline import config_from_args, print_summary, run_pipeline

    print_summary(run_pipeline(config_from_args(args)))


def cmd_convert(args: argparse.Namespace) -> None:
    if args.random_init:
        from looper_common.random_init import random_init

        if not args.tokenizer:
            raise SystemExit("looper convert: --random-init needs --tokenizer DIR (a real tokenizer to grow)")
        out = random_init(args.random_init, args.tokenizer, args.output_dir, args.dtype, args.seed, args.vocab)
        print(f"random-weight model saved to {out} (how it was made: {out / 'random_init.json'})")
        return
    from looper_common.modeling import convert_to_dir

    print(f"model saved to {convert_to_dir(args.model, args.output_dir, args.dtype)}")


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    from reward_service.settings import DEFAULT_ANSWER_BUDGET_S, DEFAULT_MAX_TEXT_CHARS, DEFAULT_SCORER, ScorerName

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--stub", action="store_true", help="public stub scorer: correctness only, generic arms")
    p.add_argument(
        "--scorer",
        choices=get_args(ScorerName),
        default=DEFAULT_SCORER,
        help="the closed service's scorer (GET /v1/scorers describes each)",
    )
    p.add_argument("--insecure-no-auth", action="store_true", help="serve without a bearer token")
    p.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    p.add_argument(
        "--path-mode",
        choices=["lexical", "embedding"],
        default="lexical",
        help="s_path from token overlap or sentence embeddings",
    )
    p.add_argument("--embedding-model", help="sentence-transformers dir or hub id (default: installed MiniLM)")
    p.add_argument("--embedding-device", default="cpu", help="device of the embedding model")
    p.add_argument("--weights", help="YAML/JSON file overriding scoring weights")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="larger bodies get 413")
    p.add_argument("--max-group-size", type=int, default=64, help="more trajectories in a group get 422")
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_MAX_TEXT_CHARS,
        help="longer texts get 422 on the contract routes and are scored bounded (first and last halves, flagged "
        "truncated) on the training routes; 32,000 characters fit ~8k tokens of reasoning",
    )
    p.add_argument(
        "--allow-label-free-singletons",
        action="store_true",
        help="OpenRLHF: score a sample with no label and no other sample of its prompt (its own answer is then its "
        "pseudo-label); refused by default",
    )
    p.add_argument(
        "--answer-mode",
        choices=["strict", "flexible"],
        default="strict",
        help="how a trajectory's final answer is read: strict, an explicit 'Answer: N', '#### N' or \\boxed{N}; "
        "flexible, else its last number (for a model that never writes an explicit answer, e.g. random weights)",
    )
    p.add_argument(
        "--answer-budget",
        type=float,
        default=DEFAULT_ANSWER_BUDGET_S,
        metavar="SECONDS",
        help="LaTeX answer evaluation time per request, over all its answers; past it an answer reads as none "
        "and says answer_timeout",
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True, help="log every request")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="service processes sharing the port (one core each)"
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default where it has one (a config field's help says its own)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _no_service(args: argparse.Namespace) -> None:
    sys.exit(
        f"looper serve: the reward service is not installed here ({args.reason}): run the service image, "
        "or pip install 'looper-math[service]' from the full source"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="looper", description="Regime W reward service and training clients.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=DefaultsHelpFormatter)

    try:
        serve_flags = argparse.ArgumentParser(add_help=False)
        add_serve_flags(serve_flags)  # imports the service's settings
    except ImportError as exc:  # a client install (the trainer and worker images): the other commands work
        # a parser that takes anything (no option prefix): `looper serve --port 1` gets the message below
        serve = sub.add_parser("serve", help="run the reward service (not installed here)", prefix_chars="\0")
        serve.add_argument("ignored", nargs="*")
        serve.set_defaults(func=_no_service, reason=str(exc))
    else:
        serve = sub.add_parser("serve", help="run the reward service", parents=[serve_flags])
        serve.set_defaults(func=cmd_serve)

    schema = sub.add_parser("schema", help="export the JSON Schemas of the shared contract")
    schema.add_argument("--out", default="schemas", help="folder for the *.schema.json files")
    schema.set_defaults(func=cmd_schema)

    demo = sub.add_parser("demo", help="start the service on 127.0.0.1, score a sample group, stop it")
    demo.add_argument("--stub", action="store_true", help="the public stub scorer")
    demo.add_argument("--port", type=int, default=0, help="0 picks a free port")
    demo.set_defaults(func=cmd_demo)
    data = sub.add_parser("data", help="prepare GSM8K train/dev, GSM8K-Platinum and generated problems as JSONL")
    data.add_argument("--out", default="data", help="output folder")
    data.add_argument("--gsm8k", help="hub id (openai/gsm8k) or a folder with train.jsonl / a JSONL file")
    data.add_argument("--platinum", help="hub id (madrylab/gsm8k-platinum) or a folder with test.jsonl / a JSONL file")
    data.add_argument("--generated", type=int, default=0, help="N generated training problems")
    data.add_argument("--generated-eval", type=int, default=0, help="N held-out generated problems")
    data.add_argument("--generated-min-steps", type=int, default=1, help="generated problems take at least K steps")
    data.add_argument("--generated-max-steps", type=int, default=6, help="generated problems take at most K steps")
    data.add_argument("--dev-fraction", type=float, default=0.2, help="share of GSM8K train held out as dev")
    data.add_argument("--seed", type=int, default=0, help="seed of the train/dev split")
    data.set_defaults(func=cmd_data)

    from looper_common.config import add_config_args
    from trainer.merge import MergeConfig
    from trainer.sft import SFTStageConfig

    sft = sub.add_parser("sft", help="LoRA / QLoRA supervised fine-tuning (TRL SFTTrainer)")
    add_config_args(sft, SFTStageConfig)
    sft.set_defaults(func=cmd_sft)

    from rollout_worker.worker import RolloutConfig

    rollouts = sub.add_parser("rollouts", help="sample every arm of each question, score over HTTP, write JSONL")
    add_config_args(rollouts, RolloutConfig)
    rollouts.set_defaults(func=cmd_rollouts)

    from trainer.dpo import DPOStageConfig
    from trainer.prefs import PrefsConfig

    prefs = sub.add_parser("prefs", help="preference pairs from scored rollouts: correctness, then coherence")
    add_config_args(prefs, PrefsConfig)
    prefs.set_defaults(func=cmd_prefs)

    dpo = sub.add_parser("dpo", help="DPO with LoRA on the SFT model (TRL DPOTrainer), reference = frozen SFT")
    add_config_args(dpo, DPOStageConfig)
    dpo.set_defaults(func=cmd_dpo)

    from trainer.rft import RFTStageConfig

    rft = sub.add_parser(
        "rft", help="rejection-sampling SFT on the best correct rollouts; expert iteration with --rounds N"
    )
    add_config_args(rft, RFTStageConfig)
    rft.set_defaults(func=cmd_rft)

    from trainer.evaluate import EvalConfig

    evaluate = sub.add_parser("eval", help="one greedy answer per question, strict and flexible accuracy")
    add_config_args(evaluate, EvalConfig, repeatable=("model",))
    evaluate.set_defaults(func=cmd_eval)

    compare = sub.add_parser("compare", help="evals side by side: Wilson CIs, McNemar, bootstrap, noise floor")
    compare.add_argument("runs", nargs="+", help="eval output dirs (or predictions JSONL files)")
    compare.add_argument("--out", default="runs/compare", help="report.md, accuracy.png, comparison.json")
    compare.add_argument("--names", help="comma-separated labels, one per run (default: each eval's name)")
    compare.add_argument("--mode", choices=["strict", "flexible"], default="strict", help="answer extraction tested")
    compare.add_argument("--bootstrap", type=_positive_int, default=10_000, help="paired bootstrap resamples")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level of the intervals and tests")
    compare.set_defaults(func=cmd_compare)

    seeds = sub.add_parser(
        "compare-seeds", help="arms trained with several seeds: per-seed and seed-pooled differences vs baselines"
    )
    seeds.add_argument(
        "--arm",
        type=arm_spec,
        action="append",
        required=True,
        metavar="NAME=DIR[,DIR...]",
        help="an arm and its eval dirs, one per seed in seed order; one dir: shared by every seed (repeatable)",
    )
    seeds.add_argument(
        "--baseline",
        action="append",
        required=True,
        metavar="NAME",
        help="an arm to compare the others with (repeatable)",
    )
    seeds.add_argument(
        "--mode",
        choices=["strict", "flexible"],
        default="strict",
        help="answer extraction tested (default: %(default)s)",
    )
    seeds.add_argument(
        "--bootstrap", type=_positive_int, default=10_000, help="bootstrap resamples (default: %(default)s)"
    )
    seeds.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    seeds.add_argument("--out", required=True, help="folder for pooled.json and pooled.md")
    seeds.set_defaults(func=cmd_compare_seeds)

    from trainer.rl import RLStageConfig

    consensus = sub.add_parser(
        "consensus", help="arm-consensus labels: each question's majority answer across arms as its training gold"
    )
    consensus.add_argument("--rollouts-file", required=True, help="scored rollouts (looper rollouts)")
    consensus.add_argument("--output-file", required=True, help="JSONL of {id, question, answer: '#### N'}")
    consensus.set_defaults(func=cmd_consensus)

    from trainer.variants import VariantsConfig

    variants = sub.add_parser(
        "variants", help="probes as verifiable prompts: paraphrases and counterfactual twins with recomputed answers"
    )
    add_config_args(variants, VariantsConfig)
    variants.set_defaults(func=cmd_variants)

    rl = sub.add_parser("rl", help="online RL (TRL GRPO or RLOO) with rewards from the service over HTTP")
    add_config_args(rl, RLStageConfig)
    rl.set_defaults(func=cmd_rl)

    from trainer.pipeline import add_pipeline_args

    pipeline = sub.add_parser(
        "pipeline", help="data -> sft -> rollouts -> prefs -> dpo -> rl -> eval -> compare, resumable (--preset)"
    )
    add_pipeline_args(pipeline)
    pipeline.set_defaults(func=cmd_pipeline)

    convert = sub.add_parser(
        "convert", help="save any model source (e.g. a .gguf file), or a random-weight model of a shape, as a dir"
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model source: a .gguf file, a safetensors dir or a hub id")
    source.add_argument(
        "--random-init",
        metavar="SHAPE_OR_CONFIG",
        help="random weights of a shape (llama-3-8b, tiny-llama) or a config.json, built here (on the GPU if any)",
    )
    convert.add_argument("--tokenizer", help="with --random-init: a tokenizer dir, grown to the vocabulary")
    convert.add_argument(
        "--vocab", type=int, help="with --random-init: another vocabulary size (shape no longer exact)"
    )
    convert.add_argument("--seed", type=int, default=0, help="with --random-init: the weights' seed")
    convert.add_argument("--output-dir", required=True, help="folder to save the model in")
    convert.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="weights dtype"
    )
    convert.set_defaults(func=cmd_convert)

    merge = sub.add_parser("merge", help="fold a LoRA adapter into a full checkpoint, verified by logits")
    add_config_args(merge, MergeConfig)
    merge.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> None:
    # cuBLAS reads it once, at its first use: set before any stage touches the GPU, so an eval later in the same
    # process (a pipeline's, after SFT) gets reproducible reductions
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from looper_common.modeling import ModelSourceError
    from rollout_worker.client import ServiceError, ServiceUnavailable
    from rollout_worker.parallel import DataParallelError
    from trainer.data import DataError
    from trainer.rl import RewardServiceFailure

    try:
        args.func(args)
    except (
        DataError,
        DataParallelError,
        ModelSourceError,
        ServiceError,
        ServiceUnavailable,
        RewardServiceFailure,
        TokenFileError,
    ) as exc:
        raise SystemExit(f"looper {args.command}: {exc}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
