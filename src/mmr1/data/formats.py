"""One pure `record -> Sample` function per public record format.

Each parser checks only what it needs and raises a `DataError` naming the field; the
loader adds the file and row. Images are kept as references (path, bytes or PIL image),
never decoded here, and relative paths are left for the loader to resolve.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import DataError
from .schema import ImageRef, Sample, count_image_parts

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system", "tool": "tool"}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


# --- field helpers -------------------------------------------------------------------

def _get(record: dict, key: str, types: type | tuple, *, optional: bool = False, field: str | None = None):
    """record[key] checked against `types`; a missing or null required key is an error."""
    field = field or key
    value = record.get(key)
    if value is None:
        if optional:
            return None
        raise DataError("missing", field=field)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise DataError(f"expected {_type_names(types)}, got {type(value).__name__}", field=field)
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def _text(value: Any, field: str) -> str:
    """An answer or choice: strings as is, numbers as their text (R1-V stores counts as ints)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected a string or number, got {type(value).__name__}", field=field)


def _texts(values: Any, field: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise DataError(f"expected a list, got {type(values).__name__}", field=field)
    return [_text(v, f"{field}[{i}]") for i, v in enumerate(values)]


def _precision(value: Any, field: str = "precision") -> int | None:
    """MathVista stores precision as a float (1.0); anything non-integral is an error."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise DataError(f"expected an integer, got {value!r}", field=field)


def image_ref(value: Any, field: str) -> ImageRef:
    """A path, bytes, PIL image or HF `{"bytes", "path"}` dict, as an ImageRef (bytes win)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise DataError("image dict has neither 'bytes' nor 'path'", field=field)
    if isinstance(value, (str, Path, bytes, bytearray, Image.Image)):
        if isinstance(value, str) and not value:
            raise DataError("empty image path", field=field)
        return bytes(value) if isinstance(value, bytearray) else value
    raise DataError(f"expected an image path, bytes or {{'bytes','path'}} dict, got {type(value).__name__}",
                    field=field)


def _image_list(record: dict, key: str) -> list[ImageRef]:
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [image_ref(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _parts(text: str, role: str) -> list[dict]:
    """Split text at `<image>` placeholders into text and image parts (user turns only)."""
    if role != "user":
        return [{"type": "text", "text": text}]
    parts: list[dict] = []
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def chat(turns: list[tuple[str, str]], n_images: int, field: str) -> list[dict]:
    """(role, text) turns -> HF messages with image parts where `<image>` stood.

    Without any placeholder the images go first in the first user turn (how Qwen-VL
    recipes present a single-image question). A placeholder count that differs from the
    number of images is an error: silently pairing them wrongly would corrupt training.
    """
    n_tokens = sum(text.count(IMAGE_TOKEN) for role, text in turns if role == "user")
    if n_tokens and n_tokens != n_images:
        raise DataError(f"{n_tokens} '{IMAGE_TOKEN}' placeholder(s) but {n_images} image(s)", field=field)
    messages = []
    for role, text in turns:
        if role == "system":
            messages.append({"role": "system", "content": text})
        else:
            messages.append({"role": role, "content": _parts(text, role)})
    if n_images and not n_tokens:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise DataError(f"{n_images} image(s) but no user turn to put them in", field=field)
        first_user["content"] = [{"type": "image"} for _ in range(n_images)] + first_user["content"]
    return messages


def _user_prompt(text: str, images: list[ImageRef], field: str) -> list[dict]:
    return chat([("user", text)], len(images), field)


# --- formats -------------------------------------------------------------------------

def from_geometry3k(record: dict) -> Sample:
    """hiyouga/geometry3k and Osilly/Vision-R1-rl: problem, answer, images."""
    problem = _get(record, "problem", str)
    answer = _text(_get(record, "answer", (str, int, float)), "answer")
    images = _image_list(record, "images")
    return Sample(id=str(record.get("id", "")), messages=_user_prompt(problem, images, "problem"),
                  images=images, answers=[answer.strip()])


def from_sharegpt(record: dict) -> Sample:
    """Vision-R1-cold (LLaMA-Factory ShareGPT): conversations + image/images. LLaMA-Factory's
    variant with a `messages` key (role/content, `<image>` in the text) is read the same way."""
    key = "conversations" if "conversations" in record or "messages" not in record else "messages"
    conv = _get(record, key, list)
    turns = []
    for i, turn in enumerate(conv):
        f = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"expected a dict, got {type(turn).__name__}", field=f)
        role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        role = _get(turn, role_key, str, field=f"{f}.{role_key}")
        if role not in ROLES:
            raise DataError(f"unknown role {role!r} (expected one of {sorted(ROLES)})", field=f"{f}.{role_key}")
        turns.append((ROLES[role], _get(turn, text_key, str, field=f"{f}.{text_key}")))
    if not any(role == "user" for role, _ in turns):
        raise DataError("no user turn", field=key)
    images = _image_list(record, "images") + _image_list(record, "image")
    messages = chat(turns, len(images), key)
    answers = []
    if turns[-1][0] == "assistant":  # keep the tagged final answer so SFT data can be graded too
        found = _ANSWER_TAG.findall(turns[-1][1])
        if found:
            answers = [re.sub(r"^\s*Final Answer:", "", found[-1]).strip()]
    return Sample(id=str(record.get("id", "")), messages=messages, images=images, answers=answers)


def from_r1v(record: dict) -> Sample:
    """R1-V: train rows (image, problem, solution), test prompts (image_path, question,
    ground_truth) and eval-log rows ({"question": <test prompt>, "model_output", ...})."""
    meta = {}
    if isinstance(record.get("question"), dict):  # an R1-V eval log row wraps the prompt
        meta = {k: record[k] for k in ("model_output", "extracted_answer", "is_correct") if k in record}
        record = record["question"]
    if "solution" in record:
        text = _get(record, "problem", str)
        solution = _get(record, "solution", str)
        m = _ANSWER_TAG.search(solution)  # R1-V's accuracy_reward falls back to the whole string
        answer = (m.group(1) if m else solution).strip()
        meta["solution"] = solution
        gt = answer
    else:
        text = _get(record, "problem" if "problem" in record else "question", str)
        gt = _get(record, "ground_truth", (str, int, float))
        answer = _text(gt, "ground_truth").strip()
        # R1-V's GeoQA evaluation (string golds) parses the whole output with math-verify; its counting
        # evaluation (integer golds) reads only `<answer> N </answer>`. `eval.answer_fallback=auto` follows.
        meta["answer_fallback"] = isinstance(gt, str)
    key = "image_path" if "image_path" in record else "image"
    images = [image_ref(_get(record, key, object), key)]
    answer_type = "integer" if isinstance(gt, int) and not isinstance(gt, bool) else None
    return Sample(id=str(record.get("id", "")), messages=_user_prompt(text, images, key), images=images,
                  answers=[answer], answer_type=answer_type, meta=meta)


MATHVISTA_FIELDS = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade",
                    "skills")  # what MathVista's leaderboard breaks accuracy down by (calculate_score.py)


def from_mathvista(record: dict, prompt: str = "query") -> Sample:
    """AI4Math/MathVista: the HF rows and the official testmini.json/test.json values alike.

    prompt "query": MathVista's `query` (the question with its answer-format hint, unit and choices) when the
    record has one, else the question; "question": the bare question with the choices listed under it.
    `answer_type` becomes "multi_choice" for multiple-choice questions (the original, the unit and the
    leaderboard's breakdown fields go to meta, and meta["scorer"] makes `checker=auto` grade as MathVista).
    """
    if prompt not in ("query", "question"):
        raise DataError(f"unknown MathVista prompt {prompt!r}; expected 'query' or 'question'", field="prompt")
    question = _get(record, "question", str)
    if not question.strip():
        raise DataError("empty question", field="question")
    answer = _text(_get(record, "answer", (str, int, float)), "answer")
    choices = record.get("choices")
    choices = _texts(choices, "choices") if choices is not None else None
    key = "decoded_image" if record.get("decoded_image") is not None else "image"
    images = [image_ref(_get(record, key, object), key)]
    query = _get(record, "query", str, optional=True)
    _get(record, "unit", str, optional=True)  # checked: the scorer strips it from predictions
    if prompt == "query" and query and query.strip():
        text = query
    else:
        text = question
        if choices:
            text += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    metadata = _get(record, "metadata", dict, optional=True) or {}
    qtype = _get(record, "question_type", str, optional=True)
    answer_type = _get(record, "answer_type", str, optional=True)
    category = metadata.get("category") or metadata.get("task") or record.get("task") or qtype
    meta: dict = {k: record[k] for k in ("question_type", "answer_type", "unit", "query") if record.get(k) is not None}
    meta["scorer"] = "mathvista"
    if metadata:
        meta["metadata"] = metadata
    meta["breakdown"] = {f: v for f in MATHVISTA_FIELDS
                         if (v := record.get(f) if f in ("question_type", "answer_type") else metadata.get(f))
                         not in (None, "", [])}
    return Sample(id=str(record.get("pid", record.get("id", ""))), messages=_user_prompt(text, images, key),
                  images=images, answers=[answer], choices=choices or None,
                  answer_type="multi_choice" if qtype == "multi_choice" else answer_type,
                  precision=_precision(record.get("precision")), category=category, meta=meta)


def _image_urls(value: Any) -> list[str] | None:
    """FVQA's `image_urls`: the question images' original http(s) URLs (the web image search sends them)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"expected a list of URLs, got {type(value).__name__}", field="image_urls")
    for i, url in enumerate(value):
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
            raise DataError(f"not an http(s) URL: {url!r}", field=f"image_urls[{i}]")
    return list(value)


def from_mmsearch(record: dict) -> Sample:
    """MMSearch-R1 verl parquet: prompt (chat list), images, reward_model, data_source."""
    prompt = _get(record, "prompt", (list, tuple))
    turns = []
    for i, m in enumerate(prompt):
        f = f"prompt[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"expected a dict, got {type(m).__name__}", field=f)
        role = _get(m, "role", str, field=f"{f}.role")
        if role not in ROLES:
            raise DataError(f"unknown role {role!r}", field=f"{f}.role")
        turns.append((ROLES[role], _get(m, "content", str, field=f"{f}.content")))
    images = _image_list(record, "images")
    rm = _get(record, "reward_model", dict)
    gt = _text(_get(rm, "ground_truth", (str, int, float), field="reward_model.ground_truth"),
               "reward_model.ground_truth")
    raw = rm.get("candidate_answers")
    candidates: list = []
    if isinstance(raw, str):  # stored as a JSON string of a list
        try:
            candidates = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e}", field="reward_model.candidate_answers") from None
    elif raw is not None:
        candidates = raw
    candidates = _texts(candidates, "reward_model.candidate_answers")
    answers = list(dict.fromkeys([gt] + candidates))
    meta = {"data_source": record.get("data_source"), "image_urls": _image_urls(record.get("image_urls"))}
    if rm.get("style") is not None:
        meta["reward_style"] = rm["style"]
    return Sample(id=str(record.get("id", "")), messages=chat(turns, len(images), "prompt"), images=images,
                  answers=answers, meta=meta)


def from_mmr1(record: dict) -> Sample:
    """This library's own JSONL (what `save_jsonl` writes): HF messages + image paths."""
    messages = _get(record, "messages", list)
    for i, m in enumerate(messages):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"expected a dict, got {type(m).__name__}", field=f)
        role = _get(m, "role", str, field=f"{f}.role")
        if role not in {"system", "user", "assistant", "tool"}:
            raise DataError(f"unknown role {role!r}", field=f"{f}.role")
        content = _get(m, "content", (str, list), field=f"{f}.content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            pf = f"{f}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                _get(part, "text", str, field=f"{pf}.text")
            elif kind != "image":
                raise DataError("expected {'type': 'text', 'text': ...} or {'type': 'image'}", field=pf)
    images = _image_list(record, "images")
    if count_image_parts(messages) != len(images):
        raise DataError(f"{count_image_parts(messages)} image part(s) in messages but {len(images)} image(s)",
                        field="images")
    answers = record.get("answers", [])
    answers = [_text(answers, "answers")] if isinstance(answers, (str, int, float)) else _texts(answers, "answers")
    choices = record.get("choices")
    return Sample(id=str(record.get("id", "")), messages=messages, images=images, answers=answers,
                  choices=_texts(choices, "choices") if choices is not None else None,
                  answer_type=_get(record, "answer_type", str, optional=True),
                  precision=_precision(record.get("precision")),
                  category=_get(record, "category", str, optional=True),
                  meta=_get(record, "meta", dict, optional=True) or {})


PARSERS: dict[str, Callable[[dict], Sample]] = {
    "mmr1": from_mmr1,
    "sharegpt": from_sharegpt,
    "mmsearch": from_mmsearch,
    "mathvista": from_mathvista,
    "r1v": from_r1v,
    "geometry3k": from_geometry3k,
}
FORMATS = tuple(PARSERS)

# Distinctive keys, checked in this order; the first match wins. Loose on purpose: a row
# missing a required field should still be routed to its parser, which names the field.
def _sharegpt_messages(record: dict) -> bool:
    """A `messages` list whose text carries `<image>` placeholders is LLaMA-Factory ShareGPT,
    not native (native messages hold image parts)."""
    msgs = record.get("messages")
    return isinstance(msgs, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), str) and IMAGE_TOKEN in m["content"] for m in msgs)


_SIGNATURES: list[tuple[str, Callable[[dict], bool]]] = [
    ("sharegpt", lambda r: "conversations" in r or _sharegpt_messages(r)),
    ("mmr1", lambda r: "messages" in r),
    ("mmsearch", lambda r: "reward_model" in r or ("prompt" in r and "data_source" in r)),
    ("mathvista", lambda r: "pid" in r or "decoded_image" in r or "answer_type" in r or "question_type" in r),
    ("r1v", lambda r: "solution" in r or "ground_truth" in r or "image_path" in r
     or isinstance(r.get("question"), dict)),
    ("geometry3k", lambda r: "problem" in r),
]


def detect_format(record: dict) -> str:
    """The format name of a record, judged by its keys."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    for name, matches in _SIGNATURES:
        if matches(record):
            return name
    raise DataError(f"unknown record format (keys: {sorted(record)}); known formats: {', '.join(FORMATS)}")


def parse_record(record: dict, format: str = "auto", mathvista_prompt: str = "query") -> tuple[str, Sample]:
    """(format name, Sample) for one record."""
    fmt = detect_format(record) if format == "auto" else format
    if fmt not in PARSERS:
        raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "mathvista":
        return fmt, from_mathvista(record, prompt=mathvista_prompt)
    return fmt, PARSERS[fmt](record)
