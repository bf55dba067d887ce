"""Vision-R1's cold-start data by modality bridging (METHODS §2.2).

For each (image, question, answer): (1) the MLLM writes a pseudo-CoT from all three; (2) the MLLM writes a
detailed description from the image, the question and that pseudo-CoT (the paper's template); (3) a
reasoning LLM that sees only the description and the question thinks step by step and answers; (4) the
sample is kept only if that answer passes the same checker the rewards use and the reasoning passes the
consistency rules, and phrases that refer to the description are rewritten to refer to the image; (5) the
reasoning is paired with the original image as ShareGPT JSONL with a `<think> … </think><answer> Final
Answer:X </answer>` target, the format Vision-R1-cold uses.

Teachers are OpenAI-compatible servers (`ApiTeacher`), or, offline, `ProgrammaticTeacher`, which plays both
roles over the synthetic worlds: it describes the scene from its layout (missing an object now and then,
as a real captioner does) and reasons from the description text alone, reflectively.

Every finished sample is appended to OUT and to the ledger OUT.status.jsonl at once, so a crash or Ctrl-C
loses only the samples in flight, and a rerun skips every id already there.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..clients import APIError, ChatClient, image_part
from ..errors import DataError
from ..rewards.checkers import check_answer
from ..rewards.extract import extract_answer
from .schema import Sample
from .worlds import COLOURS, SHAPES, _world
from .worlds.scenes import plural

log = logging.getLogger("mmr1")

PSEUDO_COT_PROMPT = ("Question: {question}\nAnswer: {answer}\nFirst describe the image briefly, then reason step "
                     "by step from what the image shows to the given answer.")
# The paper's template (Vision-R1 Fig. 2), verbatim, ellipsis included.
DESCRIPTION_PROMPT = ("Given a image, a question:{question} and a thinking process:{thinking}, provide a detailed "
                      "description containing all the necessary details of the image to answer the question "
                      "correctly...")
REASONER_PROMPT = ("{description}\n\nFollowing the above image description, think step by step and answer the "
                   "following question directly.\n{question}")
KEYWORDS = ("Wait", "Hmm", "Alternatively")
DROP_REASONS = ("no_answer", "wrong_answer", "inconsistent", "empty_reasoning")

# (pattern, replacement): the reasoner saw a description, the SFT model will see the image.
REWRITES = [
    (re.compile(r"\b(the|this) (image )?description (says|states|shows|mentions|notes|indicates|lists)( that)?\b",
                re.I), "the image shows"),
    (re.compile(r"\b(according to|based on|from) the (image )?description\b", re.I), r"\1 the image"),
    (re.compile(r"\b(in|on) the (image )?description\b", re.I), r"\1 the image"),
    (re.compile(r"\bthe (image )?description\b", re.I), "the image"),
    (re.compile(r"\b(is|are) described\b", re.I), r"\1 shown"),
]
GIVING_UP = re.compile(r"cannot be determined|can't be determined|not enough information|impossible to "
                       r"(tell|determine)|no (image|description) (is )?(provided|given)", re.I)
CONCLUSION = re.compile(r"(?:the answer is|final answer:?|\\boxed\{)\s*\$?([^\s$}.,]+)", re.I)


# ----------------------------------------------------------------------------- the pure rules

def rewrite_description_refs(text: str) -> tuple[str, int]:
    """Description-referring phrases -> image-referring ones, with the first letter's case kept."""
    n = 0
    for pat, rep in REWRITES:
        def sub(m, rep=rep):
            out = m.expand(rep)
            return out[0].upper() + out[1:] if m.group(0)[0].isupper() else out
        text, k = pat.subn(sub, text)
        n += k
    return text, n


def split_reasoning(msg: dict) -> tuple[str, str]:
    """(thinking, final part) of a reasoner reply: DeepSeek's API returns `reasoning_content` apart, R1 served
    raw writes `<think>…</think>` first, and a model without either has only the text."""
    content = msg.get("content") or ""
    if msg.get("reasoning_content"):
        return msg["reasoning_content"].strip(), content.strip()
    if "</think>" in content:
        think, _, final = content.partition("</think>")
        return think.replace("<think>", "").strip(), final.strip()
    return content.strip(), content.strip()


def final_answer(text: str) -> str | None:
    """The answer a reasoner gave: <answer> tag, then the last \\boxed{}, 'Final Answer:', 'the answer is'."""
    tagged = extract_answer(text)
    if tagged:
        return re.sub(r"^\s*Final Answer:\s*", "", tagged).strip() or None
    boxed = re.findall(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text)
    if boxed:
        return boxed[-1].strip() or None
    for pat in (r"Final Answer:\s*(.+)", r"answer is[:\s]*\$?([^\s$]+)"):
        found = re.findall(pat, text, re.I)
        if found:
            return found[-1].strip().rstrip(".") or None
    return None


def judge(think: str, answer: str | None, sample: Sample, checker: str = "auto") -> str | None:
    """None to keep the sample, else the drop reason (one of DROP_REASONS)."""
    if answer is None:
        return "no_answer"
    if not check_answer(answer, sample, checker):
        return "wrong_answer"
    if len(think.split()) < 5:
        return "empty_reasoning"
    if GIVING_UP.search(think):
        return "inconsistent"
    concluded = CONCLUSION.findall(think)
    if concluded and not check_answer(concluded[-1], [answer], checker):
        return "inconsistent"
    return None


def keyword_counts(text: str) -> dict[str, int]:
    return {k: len(re.findall(rf"\b{k}\b", text)) for k in KEYWORDS}


def target_text(think: str, answer: str) -> str:
    return f"<think> {think} </think><answer> Final Answer:{answer} </answer>"


# ----------------------------------------------------------------------------- teachers

class ApiTeacher:
    """The MLLM and the reasoning LLM behind OpenAI-compatible endpoints."""

    def __init__(self, mllm: ChatClient, reasoner: ChatClient, max_tokens: int = 2048, temperature: float = 0.6):
        self.mllm, self.reasoner = mllm, reasoner
        self.params = {"max_tokens": max_tokens, "temperature": temperature}

    def usage(self) -> dict:
        """Tokens and requests the teachers reported in this run (a resumed run counts its own part)."""
        return {name: {**c.usage, "requests": c.requests} for name, c in (("mllm", self.mllm),
                                                                         ("reasoner", self.reasoner))}

    def _ask_mllm(self, sample: Sample, text: str) -> str:
        parts = [image_part(im) for im in sample.load_images()] + [{"type": "text", "text": text}]
        return self.mllm.chat([{"role": "user", "content": parts}], **self.params)["content"]

    def pseudo_cot(self, sample: Sample, question: str) -> str:
        return self._ask_mllm(sample, PSEUDO_COT_PROMPT.format(question=question, answer=sample.answer))

    def describe(self, sample: Sample, question: str, pseudo_cot: str) -> str:
        return self._ask_mllm(sample, DESCRIPTION_PROMPT.format(question=question, thinking=pseudo_cot))

    def reason(self, description: str, question: str) -> tuple[str, str | None]:
        msg = self.reasoner.chat([{"role": "user", "content": REASONER_PROMPT.format(description=description,
                                                                                    question=question)}],
                                 **self.params)
        think, final = split_reasoning(msg)
        return think, final_answer(final)


class ProgrammaticTeacher:
    """Both roles over the synthetic worlds, offline. The description comes from the scene layout and misses
    one object with probability `miss_rate` (seeded by the sample id); the reasoner parses the description
    text and the question and solves from them alone, with R1-style re-checks."""

    def __init__(self, miss_rate: float = 0.1, style: str = "reflective"):
        self.miss_rate, self.style = miss_rate, style

    @staticmethod
    def _meta(sample: Sample) -> dict:
        if "objects" not in sample.meta:
            raise DataError("the programmatic teacher works on synthetic-world samples only; use "
                            "coldstart.teacher=api for other data", file=sample.source or sample.id)
        return sample.meta

    def pseudo_cot(self, sample: Sample, question: str) -> str:
        meta = self._meta(sample)
        think, _ = _world(meta["world"]).solve(meta, "plain")
        return f"The image shows {len(meta['objects'])} objects on a grid. {think}"

    def describe(self, sample: Sample, question: str, pseudo_cot: str) -> str:
        objects = list(self._meta(sample)["objects"])
        rng = random.Random(f"describe/{sample.id}")
        if objects and rng.random() < self.miss_rate:
            objects.pop(rng.randrange(len(objects)))
        items = "; ".join(f"a {c} {s} at row {r + 1}, column {k + 1}" for r, k, c, s in objects)
        return (f"The image shows {len(objects)} objects on a white grid: {items}." if objects
                else "The image shows an empty grid.")

    def reason(self, description: str, question: str) -> tuple[str, str | None]:
        objects = [[int(r) - 1, int(k) - 1, c, s] for c, s, r, k in
                   re.findall(r"a (\w+) (\w+) at row (\d+), column (\d+)", description)]
        query = parse_world_question(question)
        if query is None:
            return "Hmm, I cannot tell what the question asks from the description.", None
        world, query = query
        asked = query.get("colours", [query.get("colour")])
        colours = [c for c in COLOURS if c in {o[2] for o in objects} | set(asked)]
        meta = {"objects": objects, "query": query, "colours": colours, "shapes": sorted({o[3] for o in objects}
                                                                                          | {query.get("shape")} - {None})}
        think, answer = _world(world).solve(meta, self.style)
        return f"Hmm, the description says there are {len(objects)} objects. {think}", str(answer)


def parse_world_question(q: str) -> tuple[str, dict] | None:
    """(world, query) from a synthetic-world question's text, or None."""
    if m := re.search(r"Each (\w+) object is worth (\d+) points? and each (\w+) object is worth (\d+) point", q):
        return "reasoning", {"op": "weighted_sum", "colours": [m[1], m[3]], "weights": [int(m[2]), int(m[4])]}
    if m := re.search(r"How many more (\w+) objects than (\w+) objects", q):
        return "reasoning", {"op": "difference", "colours": [m[1], m[2]]}
    if m := re.search(r"How many (\w+) and (\w+) objects are there in total", q):
        return "reasoning", {"op": "total", "colours": [m[1], m[2]]}
    if m := re.search(r"How many (\w+) objects are in the image", q):
        return "counting", {"colour": m[1]}
    if m := re.search(r"How many (\w+) are in the image", q):
        shape = next((s for s in SHAPES if plural(s) == m[1]), None)
        return ("counting", {"shape": shape}) if shape else None
    return None


# ----------------------------------------------------------------------------- the pipeline

@dataclass
class Outcome:
    id: str
    status: str  # "kept" or "dropped"
    reason: str | None
    record: dict | None  # the ShareGPT record when kept
    ledger: dict


def question_of(sample: Sample) -> str:
    return sample.meta.get("question") or sample.question_text()


def process(sample: Sample, teacher, checker: str, image_dir: Path) -> Outcome:
    """Steps 1-5 for one sample. Teacher failures (APIError) propagate: the sample is retried on a rerun."""
    question = question_of(sample)
    pseudo = teacher.pseudo_cot(sample, question)
    description = teacher.describe(sample, question, pseudo)
    think, answer = teacher.reason(description, question)
    reason = judge(think, answer, sample, checker)
    think, n_rewrites = rewrite_description_refs(think)
    ledger = {"id": sample.id, "status": "dropped" if reason else "kept", "reason": reason,
              "think_words": len(think.split()), "keywords": keyword_counts(think),
              "pseudo_keywords": keyword_counts(pseudo), "rewrites": n_rewrites, "answer": answer}
    if reason:
        return Outcome(sample.id, "dropped", reason, None, ledger)
    images = [_image_path(im, image_dir, f"{_safe(sample.id)}_{i}") for i, im in enumerate(sample.images)]
    record = {"id": sample.id, "images": images, "conversations": [
        {"from": "human", "value": "<image>" * len(images) + question},
        {"from": "gpt", "value": target_text(think, answer)}]}
    return Outcome(sample.id, "kept", None, record, ledger)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


def _image_path(im, image_dir: Path, stem: str) -> str:
    if isinstance(im, (str, Path)):
        return str(Path(im).resolve())
    path = image_dir / f"{stem}.png"
    if not path.exists():
        image_dir.mkdir(parents=True, exist_ok=True)
        img = im if isinstance(im, Image.Image) else Image.open(io.BytesIO(im))
        tmp = path.with_suffix(".tmp.png")
        img.save(tmp)
        os.replace(tmp, path)
    return str(path.resolve())


def read_jsonl_ids(path: Path) -> dict[str, dict]:
    """id -> row of a JSONL file this module appends to; a torn last line (a crash mid-write) is cut off."""
    rows: dict[str, dict] = {}
    if not path.exists():
        return rows
    raw = path.read_bytes()
    good = raw[:raw.rfind(b"\n") + 1]
    if len(good) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    for line in good.decode().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[str(row["id"])] = row
    return rows


def _append(f, row: dict) -> None:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def build_coldstart(samples: list[Sample], teacher, out: str | Path, *, checker: str = "auto",
                    concurrency: int = 8, progress: bool = True) -> dict:
    """Run the pipeline over `samples` into OUT (kept, ShareGPT JSONL) and OUT.status.jsonl (every finished
    id); skips ids already finished; returns the statistics (also written to OUT.stats.json)."""
    from ..ui import progress_bar

    t0 = time.time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    status_path = out.with_name(out.name + ".status.jsonl")
    kept_rows = read_jsonl_ids(out)
    ledger = read_jsonl_ids(status_path)
    failed: dict[str, str] = {}
    image_dir = out.with_name(out.stem + "_images")
    with open(out, "a") as fo, open(status_path, "a") as fs, ThreadPoolExecutor(concurrency) as pool:
        for i in kept_rows.keys() - ledger.keys():  # kept and written, but the crash came before its ledger line
            think = re.sub(r"</think>.*", "", kept_rows[i]["conversations"][-1]["value"], flags=re.S)
            ledger[i] = {"id": i, "status": "kept", "reason": None, "think_words": len(think.split()) - 1,
                         "keywords": keyword_counts(think), "recovered": True}
            _append(fs, ledger[i])
        todo = [s for s in samples if s.id not in ledger]
        with progress_bar("coldstart", len(todo), enabled=progress) as advance:
            _run(todo, pool, concurrency, teacher, checker, image_dir, fo, fs, ledger, failed, advance)
    stats = statistics(ledger, [s.id for s in samples], failed, time.time() - t0)
    if hasattr(teacher, "usage"):
        stats["teacher_usage_this_run"] = teacher.usage()
    out.with_name(out.name + ".stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _run(todo, pool, concurrency, teacher, checker, image_dir, fo, fs, ledger, failed, advance) -> None:
    """Keep 2 x concurrency samples in flight; write each finished one at once (this thread is the only writer)."""
    pending, it = set(), iter(todo)
    while True:
        while len(pending) < 2 * concurrency and (s := next(it, None)) is not None:
            fut = pool.submit(process, s, teacher, checker, image_dir)
            fut.sample_id = s.id
            pending.add(fut)
        if not pending:
            break
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            advance(1)
            try:
                o = fut.result()
            except (APIError, DataError) as e:
                failed[fut.sample_id] = str(e)
                log.warning("coldstart: %s failed (a rerun retries it): %s", fut.sample_id, e)
                continue
            if o.record is not None:
                _append(fo, o.record)
            _append(fs, o.ledger)
            ledger[o.id] = o.ledger


def statistics(ledger: dict[str, dict], ids: list[str], failed: dict[str, str], seconds: float) -> dict:
    """Kept / dropped by reason / failed, words per kept reasoning, and the keyword counts of Vision-R1's
    Table 4 for the kept reasoning and for the pseudo-CoTs it was bridged from."""
    rows = [ledger[i] for i in ids if i in ledger]
    kept = [r for r in rows if r["status"] == "kept"]
    words = [r.get("think_words", 0) for r in kept]
    return {
        "samples": len(ids), "kept": len(kept),
        "dropped": {k: sum(r.get("reason") == k for r in rows) for k in DROP_REASONS},
        "failed": len(failed), "failed_ids": sorted(failed)[:20],
        "think_words": {"mean": sum(words) / len(words) if words else 0.0, "max": max(words, default=0),
                        "total": sum(words)},
        "keywords": {"kept reasoning": {k: sum(r.get("keywords", {}).get(k, 0) for r in kept) for k in KEYWORDS},
                     "pseudo-CoT": {k: sum(r.get("pseudo_keywords", {}).get(k, 0) for r in rows) for k in KEYWORDS}},
        "rewrites": sum(r.get("rewrites", 0) for r in kept),
        "seconds": round(seconds, 1),
    }


def make_teacher(cc) -> object:
    """The teacher a `ColdstartConfig` names."""
    if cc.teacher == "programmatic":
        return ProgrammaticTeacher(miss_rate=cc.miss_rate, style=cc.style)
    kw = dict(timeout=cc.timeout, retries=cc.retries, backoff=cc.backoff)
    mllm = ChatClient.from_env(cc.base_url, cc.model, cc.api_key_env, **kw)
    reasoner = ChatClient.from_env(cc.reasoner_base_url or cc.base_url, cc.reasoner_model or cc.model,
                                   cc.reasoner_api_key_env or cc.api_key_env, **kw)
    return ApiTeacher(mllm, reasoner, max_tokens=cc.max_tokens, temperature=cc.temperature)
