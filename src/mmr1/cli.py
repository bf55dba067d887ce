"""`mmr1` command line: tiny-model, data, sft, eval, quickstart, view, config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import DataError, MMR1Error

RECIPES = Path(__file__).parent / "recipes"


def _config_epilog() -> str:
    from .config import describe

    lines = ["config keys (set in the YAML file or as key=value overrides):"]
    for key, typ, default, help in describe():
        lines.append(f"  {key} ({typ}, default {default!r}): {help}")
    return "\n".join(lines)


def _resolve_recipe(name: str | None) -> str | None:
    """A YAML path, or the name of a recipe shipped with mmr1 (e.g. `quickstart`)."""
    if name is None or Path(name).exists() or name.endswith((".yaml", ".yml")):
        return name
    shipped = sorted(RECIPES.glob(f"*/{name}.yaml"))
    return str(shipped[0]) if shipped else name


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    path = None
    if args and "=" not in args[0]:
        path, args = args[0], args[1:]
    return _resolve_recipe(path), args


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its which-CPU-build messages
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ----------------------------------------------------------------------------- commands


def cmd_tiny_model(a) -> int:
    from .models.tiny import build_tiny_model

    t = time.time()
    out = build_tiny_model(a.out, family=a.family, size=a.size, seed=a.seed, image_size=a.image_size)
    print(f"wrote tiny {a.family} ({a.size}) checkpoint to {out} in {time.time() - t:.2f}s")
    return 0


def cmd_data_check(a) -> int:
    from .data.check import check_dataset

    from .data.check import check_mbeir, mbeir_kind

    mbeir = [f for f in a.file if a.format == "mbeir" or (a.format == "auto" and mbeir_kind(f) is not None)]
    reports = [check_mbeir(mbeir, image_root=a.image_root)] if mbeir else []
    reports += [check_dataset(f, format=a.format, image_root=a.image_root) for f in a.file if f not in mbeir]
    for report in reports:
        for line in report.lines():
            print(line)
    return 0 if all(r.ok for r in reports) else 1


def cmd_data_world(a) -> int:
    from .data.loaders import save_jsonl
    from .data.worlds import make_world

    samples = make_world(a.name, split=a.split, n=a.n, seed=a.seed, with_solution=a.with_solution,
                         teacher_miss=a.teacher_miss)
    save_jsonl(samples, a.out)
    print(f"wrote {len(samples)} {a.name}/{a.split} samples to {a.out}")
    return 0


def cmd_data_coldstart(a) -> int:
    from .build import build_samples
    from .config import load_config
    from .data.coldstart import build_coldstart, make_teacher
    from .ui import print_table

    path, overrides = _split_config_args(a.args)
    cfg = load_config(path, overrides)
    samples, errors = build_samples(cfg.data, "train")
    stats = build_coldstart(samples, make_teacher(cfg.coldstart), a.out, checker=cfg.rewards.checker,
                            concurrency=cfg.coldstart.concurrency, progress=cfg.logging.progress)
    dropped = stats["dropped"]
    print_table(f"cold start: {a.out} ({cfg.coldstart.teacher} teacher); dropped by reason; failed: a rerun "
                "retries them",
                ["samples", "kept", *[k.replace("_", " ") for k in dropped], "failed", "words/CoT"],
                [[stats["samples"], stats["kept"], *dropped.values(), stats["failed"],
                  f"{stats['think_words']['mean']:.1f}"]])
    kw = stats["keywords"]
    print_table("keywords (Vision-R1 Table 4)", ["text", *kw["kept reasoning"]],
                [[name, *counts.values()] for name, counts in kw.items()])
    for role, u in stats.get("teacher_usage_this_run", {}).items():
        print(f"{role}: {u['requests']} requests, {u['prompt_tokens']} prompt + {u['completion_tokens']} completion "
              "tokens in this run")
    if errors:
        print(f"{len(errors)} bad input records skipped (data.on_error=skip)")
    return 1 if stats["failed"] else 0


def cmd_search_build_index(a) -> int:
    from .tools.index import build_index, build_index_from_jsonl
    from .tools.embedders import make_embedder

    t = time.time()
    kw = dict(on_error=a.on_error, overwrite=a.overwrite, chunk_size=a.chunk_size)
    if a.corpus.startswith("world:"):  # a synthetic world's corpus, e.g. world:entities
        from .data.worlds import entities

        if a.corpus != "world:entities":
            raise DataError(f"{a.corpus}: only world:entities has a search corpus")
        report = build_index(entities.corpus(seed=a.seed), a.out, make_embedder(a.embedder), source=a.corpus, **kw)
    else:
        report = build_index_from_jsonl(a.corpus, a.out, a.embedder, **kw)
    print(f"indexed {report.records} records ({report.images} with images, {report.skipped} skipped, "
          f"{report.reused_chunks} chunks reused, dense text: {report.dense_text}) into {a.out} in "
          f"{time.time() - t:.1f}s")
    for reason in report.skip_reasons[:10]:
        print(f"skipped: {reason}")
    return 0


def _job(a):
    """Config, run directory and model of a `sft` / `grpo` / `eval` invocation."""
    from .build import build_model
    from .config import load_config
    from .train.run_dir import RunDir

    path, overrides = _split_config_args(a.args)
    cfg = load_config(path, overrides)
    # training claims the run directory before building anything in it (a different run there is refused)
    claim = cfg if a.command in ("sft", "grpo") else None
    run = RunDir(cfg.logging.run_dir, tensorboard=cfg.logging.tensorboard, config=claim)
    return cfg, run, build_model(cfg, run.path)


def cmd_sft(a) -> int:
    from .build import build_samples
    from .train.sft import train_sft
    from .ui import print_table

    cfg, run, lm = _job(a)
    train, _ = build_samples(cfg.data, "train", with_solution=True)
    res = train_sft(cfg, lm, train, run, progress=cfg.logging.progress)
    print_table("SFT", ["steps", "final loss", "skipped records", "seconds", "model"],
                [[res.steps, res.final_loss, res.skipped_records, f"{res.seconds:.1f}", res.final_dir]])
    run.close()
    return 0


def cmd_grpo(a) -> int:
    from .build import build_samples
    from .train.grpo import fit, mean_first_last
    from .ui import print_table

    cfg, run, lm = _job(a)
    train, _ = build_samples(cfg.data, "train")
    res = fit(cfg, lm, train, run, progress=cfg.logging.progress)
    first, last = mean_first_last(res.reward_history)
    print_table("GRPO", ["steps", "sampled reward (first 5)", "sampled reward (last 5)", "reward errors", "seconds",
                         "model"],
                [[res.steps, first, last, res.reward_errors, f"{res.seconds:.1f}", res.final_dir]])
    run.close()
    return 0


def cmd_eval(a) -> int:
    from .build import build_samples
    from .eval.evaluate import evaluate

    cfg, run, lm = _job(a)
    samples, errors = build_samples(cfg.data, "eval")
    out = run.sub("eval", a.name)
    m = evaluate(lm, samples, max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.rollout.batch_size,
                 checker=cfg.rewards.checker, system_prompt=cfg.data.system_prompt, out_dir=out,
                 show_progress=cfg.logging.progress, on_error=cfg.data.on_error,
                 temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                 retries_missing_answer=cfg.eval.retries_missing_answer, seed=cfg.eval.seed, skipped=len(errors),
                 answer_fallback=cfg.eval.answer_fallback)
    run.log_metrics(0, {k: v for k, v in m.items() if isinstance(v, (int, float))}, prefix=f"eval/{a.name}/")
    _print_eval(a.name, m)
    if m["sampling"]["retries_missing_answer"]:
        print(f"resampled for a missing </answer>: {m['retried_rows']} rows; still missing: "
              f"{m['missing_answer_rows']}")
    print(f"predictions and metrics: {out}")
    run.close()
    return 0


def _print_eval(name: str, m: dict) -> None:
    from .ui import print_table

    print_table(f"eval: {name}", ["n", "accuracy", "format rate", "mean tokens", "truncated", "skipped"],
                [[m["n"], m["accuracy"], m["format_rate"], f"{m['mean_tokens']:.1f}", m["truncation_rate"],
                  m["skipped_records"]]])
    if m.get("breakdown"):  # the benchmark's own breakdown (MathVista's leaderboard fields)
        for fld, vals in m["breakdown"].items():
            print_table(f"{name}: by {fld}", [fld, "n", "correct", "accuracy"],
                        [[k, v["n"], v["correct"], v["accuracy"]] for k, v in vals.items()])
    elif len(m["per_category"]) > 1:
        print_table(f"{name}: per category", ["category", "n", "accuracy"],
                    [[k, v["n"], v["accuracy"]] for k, v in m["per_category"].items()])


def cmd_quickstart(a) -> int:
    from .recipes.quickstart.runner import run_quickstart

    summary = run_quickstart(out=a.out, seed=a.seed, overrides=a.overrides)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_serve(a) -> int:
    from . import dist
    from .models import load_model
    from .serve import ChatServer, ServeLimits, make_http_server

    if not (Path(a.model_dir) / "config.json").exists():
        raise DataError(f"{a.model_dir}: no config.json; give a model directory (e.g. one `mmr1 tiny-model` wrote)")
    for d in a.allow_local_dir:
        if not Path(d).is_dir():
            raise DataError(f"--allow-local-dir {d}: not a directory")
    limits = ServeLimits(max_body_bytes=int(a.max_body_mb * (1 << 20)), max_images=a.max_images,
                         max_image_pixels=a.max_image_pixels, max_prompt_tokens=a.max_prompt_tokens,
                         max_tokens_limit=a.max_tokens_limit, request_timeout_s=a.request_timeout,
                         max_queue=a.max_queue, allow_local_dirs=tuple(a.allow_local_dir))
    api_key = a.api_key or os.environ.get("MMR1_API_KEY") or None
    lm = load_model(a.model_dir, dtype=a.dtype, device=str(dist.pick_device(a.device)))
    chat = ChatServer(lm, a.name or Path(a.model_dir).resolve().name, default_max_tokens=a.max_tokens,
                      limits=limits)
    httpd = make_http_server(chat, a.host, a.port, api_key=api_key)
    host, port = httpd.server_address[:2]
    if not api_key and a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {a.host} without an API key; anyone who reaches the port can use the model "
              "(set --api-key or MMR1_API_KEY)", file=sys.stderr, flush=True)
    print(f"serving {chat.name} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def _experiment(module: str, default_recipe: str, outputs: str):
    """`mmr1 othink` / `vision-r1` / `mmsearch` / `retrv`: run_<module>(recipe, out, seeds, overrides) from the runner
    beside the recipe's YAMLs (mmr1/recipes/<recipe>/runner.py)."""
    def cmd(a) -> int:
        import importlib

        recipe_dir = default_recipe.removesuffix("_cpu")
        run = getattr(importlib.import_module(f"mmr1.recipes.{recipe_dir}.runner"), f"run_{module}")
        path, overrides = _split_config_args(a.args)
        summary = run(path or _resolve_recipe(default_recipe), out=a.out, seeds=a.seeds, overrides=overrides)
        print(f"results in {summary['out']}: {outputs} ({summary['seconds']:.0f} s)")
        return 0
    return cmd


cmd_othink = _experiment("othink", "othink_mr1_cpu", "results.md, results.json, curves.svg")
cmd_vision_r1 = _experiment("vision_r1", "vision_r1_cpu", "results.md, results.json")
cmd_mmsearch = _experiment("mmsearch", "mmsearch_r1_cpu", "results.md, results.json")
cmd_retrv = _experiment("retrv", "retrv_r1_cpu", "results.md, results.json")


def cmd_view(a) -> int:
    from .view.data import open_runs

    if a.export:
        from .view.export import export

        out = export(a.runs, a.export, steps=a.export_steps)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained; open it in any browser)")
        return 0
    from .view.app import serve

    open_runs(a.runs)  # a path that is not a run fails here, in one line, before anything listens
    try:
        serve(a.runs, host=a.host, port=a.port)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_config(a) -> int:
    import yaml

    from .config import load_config, to_dict

    if a.file or a.overrides:
        cfg = load_config(_resolve_recipe(a.file), a.overrides)
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    else:
        print(_config_epilog())
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmr1", description="R1-style RL for vision-language models.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("tiny-model", help="write a tiny random Qwen VL checkpoint (no download)",
                       description="Write a complete tiny checkpoint directory (config, safetensors, tokenizer "
                                   "with the real Qwen chat template, image processor) that loads like a real one.")
    t.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
                   help="model family (default: qwen2_5_vl)")
    t.add_argument("--size", default="M", choices=["S", "M", "L", "XL"],
                   help="S ~0.3M, M ~3M, L ~25M, XL ~90M parameters (default: M)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--seed", type=int, default=0, help="weight-init seed (default: 0)")
    t.add_argument("--image-size", type=int, default=112,
                   help="image side in pixels kept unchanged by the image processor (default: 112)")
    t.set_defaults(fn=cmd_tiny_model)

    d = sub.add_parser("data", help="dataset tools: check a file, write a synthetic world")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("check", help="validate a dataset and report every bad record",
                        description="Decode every record and image; print one line per bad record "
                                    "(file:row field: what is wrong). Exit code 1 if any record is bad.")
    c.add_argument("file", nargs="+", help="JSONL/JSON/Parquet file(s) or HF datasets directory; M-BEIR query "
                                           "JSONL, candidate-pool JSONL and qrels .txt given together are checked "
                                           "against each other (every referenced candidate and query must exist)")
    c.add_argument("--format", default="auto",
                   help="record format: auto, mmr1, geometry3k, sharegpt, r1v, mathvista, mmsearch, mbeir")
    c.add_argument("--image-root", default=None, help="directory relative image paths are resolved against")
    c.set_defaults(fn=cmd_data_check)
    w = dsub.add_parser("world", help="write samples of a synthetic world as JSONL + PNG images")
    w.add_argument("name", help="world name: counting or reasoning")
    w.add_argument("--split", default="train", choices=["train", "test"], help="split (default: train)")
    w.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
    w.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    w.add_argument("--with-solution", action="store_true", help="include the teacher's solution as the target")
    w.add_argument("--teacher-miss", type=float, default=0.0,
                   help="with --with-solution: chance the teacher overlooks each object, an imperfect teacher as "
                        "in the quickstart (default: 0, a perfect one)")
    w.add_argument("--out", required=True, help="output .jsonl path (images go beside it)")
    w.set_defaults(fn=cmd_data_world)

    cs = dsub.add_parser("coldstart", help="Vision-R1 cold-start CoT data by modality bridging (ShareGPT JSONL)",
                         description="For each training sample (data.train): the MLLM writes a pseudo-CoT, then a "
                                     "detailed description; a reasoning LLM answers from the description alone; "
                                     "samples whose answer fails the reward's checker or the consistency rules are "
                                     "dropped; the rest are written as ShareGPT JSONL (<think> ... </think><answer> "
                                     "Final Answer:X </answer>) with OUT.status.jsonl (every finished id) and "
                                     "OUT.stats.json. A rerun skips finished ids. Teachers: coldstart.teacher=api "
                                     "(OpenAI-compatible: coldstart.base_url, coldstart.model, coldstart.api_key_env; "
                                     "coldstart.reasoner_*) or programmatic (offline, synthetic worlds). Exit 1 if "
                                     "some samples failed (their requests ran out of retries): rerun to finish.")
    cs.add_argument("args", nargs="*", metavar="[CONFIG|RECIPE] [key=value ...]",
                    help="a config file or recipe, then overrides (e.g. data.train=world:reasoning "
                         "coldstart.teacher=api coldstart.base_url=http://127.0.0.1:8000/v1)")
    cs.add_argument("--out", required=True, help="output .jsonl path (images go to OUT_images/)")
    cs.set_defaults(fn=cmd_data_coldstart)

    se = sub.add_parser("search", help="search tools: build a local multimodal index")
    ssub = se.add_subparsers(dest="search_command", required=True, metavar="ACTION")
    bi = ssub.add_parser("build-index", help="build a local image + text search index over a corpus",
                         description="Index a corpus of {id, image, title, text} records (JSONL; images as paths "
                                     "relative to the file, or world:entities for the synthetic entity world): "
                                     "FAISS over image embeddings, BM25 over page text, dense text vectors when "
                                     "the embedder has a text side. Built in OUT.partial/ and renamed when done; "
                                     "a rerun reuses finished chunks.")
    bi.add_argument("corpus", help="corpus JSONL, or world:entities")
    bi.add_argument("out", help="index directory")
    bi.add_argument("--embedder", default="builtin",
                    help="builtin (no weights: colour-grid image descriptor + hashed words) or a local "
                         "CLIP/SigLIP checkpoint directory (default: builtin)")
    bi.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                    help="a bad record stops the build (raise) or is skipped and counted (skip)")
    bi.add_argument("--overwrite", action="store_true", help="replace an existing index")
    bi.add_argument("--chunk-size", type=int, default=256, help="records embedded per saved chunk (default: 256)")
    bi.add_argument("--seed", type=int, default=0, help="world:entities: the world's seed (default: 0)")
    bi.set_defaults(fn=cmd_search_build_index)

    for name, fn, what in (("sft", cmd_sft, "supervised fine-tuning (cold-start / activation data)"),
                           ("grpo", cmd_grpo, "GRPO reinforcement learning with verifiable rewards"),
                           ("eval", cmd_eval, "evaluation (greedy, or sampled with eval.*): accuracy, format rate, lengths")):
        s = sub.add_parser(name, help=what, epilog=_config_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           usage=f"mmr1 {name} [CONFIG.yaml | RECIPE] [key=value ...]",
                           description=f"{what}. CONFIG is a YAML file or a shipped recipe name; "
                                       "key=value overrides any config key (e.g. trainer.lr=1e-5 model.path=/ckpt).")
        s.add_argument("args", nargs="*", help="config file or recipe name, then key=value overrides")
        if name == "eval":
            s.add_argument("--name", default="eval", help="name of this evaluation (RUN/eval/NAME)")
        s.set_defaults(fn=fn)

    q = sub.add_parser("quickstart", help="the main job on the built-in default (tiny model, synthetic world)",
                       description="Build a tiny model and the default synthetic world, run cold-start SFT, "
                                   "evaluate, run GRPO from the SFT checkpoint, evaluate again, print the "
                                   "before/after table and write OUT/summary.json. Runs offline on a CPU.")
    q.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    q.add_argument("--seed", type=int, default=0, help="seed for the model, the world and training (default: 0)")
    q.add_argument("overrides", nargs="*", help="key=value config overrides")
    q.set_defaults(fn=cmd_quickstart)

    for name, fn, section, what, desc in (
        ("othink", cmd_othink, "othink", "OThink-MR1 experiment: base, SFT, GRPO and GRPO-D, same- and cross-task",
         "Train SFT, GRPO (constant beta) and GRPO-D (dynamic beta) from one base model on every task of the "
         "recipe, over several seeds; evaluate every model on every task; write OUT/results.json, OUT/results.md "
         "(mean ± std) and OUT/curves.svg (beta, reward, KL per step). Default recipe: othink_mr1_cpu (tiny "
         "Qwen2-VL, synthetic counting and reasoning worlds, CPU). The paper's settings: othink_mr1 (give "
         "model.path and the tasks' data paths)."),
        ("vision-r1", cmd_vision_r1, "vision_r1", "Vision-R1 experiment: Zero, cold-start SFT (CI), CI + PTST, "
         "CI + long RL",
         "From one base model per seed: Vision-R1-Zero (RL with the R1-Zero format prompt), the cold start (mmr1 "
         "data coldstart) and its SFT (CI), CI + PTST with the hard formatting result reward (vision_r1.stages, "
         "each continuing from the last), and CI + RL at the longest length without PTST. Writes "
         "OUT/results.json and OUT/results.md (accuracy and mean output length, mean ± std). Default recipe: "
         "vision_r1_cpu (tiny model, synthetic reasoning world, CPU); the paper's settings: vision_r1."),
        ("mmsearch", cmd_mmsearch, "mmsearch", "MMSearch-R1 experiment: warm-up SFT, RL without and with the search "
         "penalty, always- and never-search baselines",
         "Per seed: the entity world and its local search index (tool results cached on disk), warm-up SFT on "
         "direct and image-search teacher trajectories, agent GRPO (multi-turn rollouts with image and text "
         "search) without and with the search penalty; greedy multi-turn evaluation of the warm-up model, both RL "
         "models, always search (RAG-style) and never search. Writes OUT/results.json and OUT/results.md "
         "(accuracy and search ratio on familiar vs unfamiliar entities, mean ± std). Default recipe: "
         "mmsearch_r1_cpu (tiny Qwen2.5-VL, CPU); the paper's settings: mmsearch_r1 (give model.path and "
         "the data and index paths)."),
        ("retrv", cmd_retrv, "retrv", "Retrv-R1 experiment: first stage, ICM self-alignment, activation SFT, "
         "RL with the lambda curriculum and fixed lambda",
         "Per seed: the synthetic composed-image world, first-stage R@1/R@5 and top-K, self-alignment of the "
         "information compression module (LM frozen), activation SFT on four-phase teacher CoTs over compressed "
         "prompts, agent GRPO with details inspection (curriculum and fixed lambda); greedy evaluation of every "
         "model with full candidates, compression only and compression + inspection (R@1, prompt tokens, time "
         "and peak memory per query, inspections). Writes OUT/results.json and OUT/results.md (mean ± std). "
         "Default recipe: retrv_r1_cpu (tiny Qwen2.5-VL, CPU); Qwen2.5-VL-3B/7B settings: retrv_r1.")):
        e = sub.add_parser(name, help=what, description=desc + " Rerunning the same command resumes. Put "
                           "key=value overrides before --out/--seeds.")
        e.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                       help="a recipe name or YAML path, then config overrides")
        e.add_argument("--out", help="experiment directory (default: logging.run_dir of the recipe)")
        e.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default: {section}.seeds of the recipe)")
        e.set_defaults(fn=fn)

    sv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible chat-completions API",
                        description="Serve MODEL_DIR at http://HOST:PORT/v1 (FastAPI + uvicorn): POST "
                                    "/v1/chat/completions (messages with images as base64 data URLs; max_tokens, "
                                    "temperature (0: greedy), top_p, n, stop, seed), GET /v1/models, GET /health. "
                                    "Teachers, judges and evaluation reach it like vLLM or a hosted API. Requests "
                                    "are checked against the limits below (413/400 with a message), generation runs "
                                    "one request at a time in arrival order, /health always answers.")
    sv.add_argument("model_dir", help="model directory (config.json, weights, tokenizer, processor)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one and prints it)")
    sv.add_argument("--name", help="model name clients send and see (default: the directory's name)")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    sv.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    sv.add_argument("--max-tokens", type=int, default=512, help="completion length when a request gives none")
    sv.add_argument("--max-tokens-limit", type=int, default=4096, help="longest completion a request may ask for")
    sv.add_argument("--api-key", default=None,
                    help="require 'Authorization: Bearer KEY' on /v1 routes, else 401 (default: $MMR1_API_KEY; "
                         "unset: no key). Prefer the variable: a flag shows in the process list")
    sv.add_argument("--allow-local-dir", action="append", default=[], metavar="DIR",
                    help="serve local image paths / file:// URLs that resolve under DIR (repeatable; default: none, "
                         "every local path is refused)")
    sv.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MiB, else 413 "
                                                                   "(default: 20)")
    sv.add_argument("--max-images", type=int, default=8, help="images per request (default: 8)")
    sv.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                    help="pixels per image, read from its header before decoding (default: 16777216)")
    sv.add_argument("--max-prompt-tokens", type=int, default=8192,
                    help="prompt tokens per request, images included (default: 8192)")
    sv.add_argument("--request-timeout", type=float, default=300.0,
                    help="seconds a request may wait and generate before a 504 (default: 300)")
    sv.add_argument("--max-queue", type=int, default=128, help="requests waiting for generation before new ones "
                                                               "get 503 (default: 128)")
    sv.set_defaults(fn=cmd_serve)

    vw = sub.add_parser("view", help="browse runs in a local web app: curves, tables, rollouts, eval predictions",
                        description="Serve RUN directories read-only at http://HOST:PORT/: every metric per step "
                                    "(runs overlaid, smoothing, x by step or time), summary.json/results.json as "
                                    "tables, the recorded rollouts (step -> group -> completion: images, turns, tool "
                                    "calls and observations, loss-mask shading, rewards, advantage, filters), eval "
                                    "predictions (filters, side-by-side of two eval sets) and the tool-call rate with "
                                    "a warning when it halves while the reward rises. Refresh reads new steps of a "
                                    "run still training. With --export, write one self-contained HTML file instead.")
    vw.add_argument("runs", nargs="+", metavar="RUN", help="run directories (e.g. runs/quickstart); several overlay")
    vw.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    vw.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one and prints it)")
    vw.add_argument("--export", metavar="FILE.html", help="write a self-contained HTML report (curves, tables, a "
                                                          "sample of rollouts with images inlined) and exit")
    vw.add_argument("--export-steps", type=int, default=3, metavar="N",
                    help="recorded rollout steps per run part in the export: first, last, evenly between (default 3)")
    vw.set_defaults(fn=cmd_view)

    cf = sub.add_parser("config", help="list every config key, or print a resolved config",
                        description="Without arguments: every config key with its type, default and meaning. "
                                    "With a file/recipe and overrides: the resolved config as YAML.")
    cf.add_argument("file", nargs="?", help="config file or recipe name")
    cf.add_argument("overrides", nargs="*", help="key=value overrides")
    cf.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    rank0 = os.environ.get("RANK", "0") == "0"  # other ranks print warnings only; all keep RUN/log.rankN.txt
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for h in logging.getLogger().handlers:
        h.setLevel(logging.INFO if rank0 else logging.WARNING)
    if a.fn is cmd_view:  # the viewer reads JSON and serves files: it starts without torch or transformers
        dist = None
    else:
        _quiet_libraries()
        from . import dist

    try:
        if dist is None:
            return a.fn(a)
        if dist.world_size() > 1 and a.fn not in (cmd_sft, cmd_grpo):
            raise MMR1Error(f"`mmr1 {a.command}` runs in one process; under torchrun run `mmr1 sft` or `mmr1 grpo` "
                            f"(data parallel), and evaluate or run the experiments without torchrun")
        dist.init()  # under torchrun: join the process group (gloo on the CPU, nccl on GPUs)
        return a.fn(a)
    except MMR1Error as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"stopped: {e or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        if dist is not None:
            dist.close()


if __name__ == "__main__":
    sys.exit(main())
