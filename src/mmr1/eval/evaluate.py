"""`mmr1 eval`: greedy answers for a dataset, accuracy, format rate, lengths, per-category breakdown."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..data.encode import with_system
from ..data.schema import Sample
from ..errors import DataError
from ..rewards import score_completion
from ..rollout.hf import generate
from ..ui import progress_bar


def evaluate(lm, samples: list[Sample], *, max_new_tokens: int, batch_size: int = 32, checker: str = "auto",
             system_prompt: str | None = None, out_dir: str | Path | None = None, show_progress: bool = True,
             on_error: str = "raise") -> dict:
    """Score greedy completions; writes predictions.jsonl and metrics.json into out_dir when given."""
    prompts, kept, bad = [], [], 0
    for s in samples:
        try:
            prompts.append((with_system(s.prompt_messages(), system_prompt), s.load_images()))
            kept.append(s)
        except DataError:
            if on_error == "raise":
                raise
            bad += 1
    with progress_bar("eval", len(prompts), enabled=show_progress) as advance:
        completions = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=advance)
    rows, by_cat = [], defaultdict(list)
    for s, c in zip(kept, completions):
        sc = score_completion(c.text, s, kind=checker)
        row = {"id": s.id, "category": s.category, "answer": s.answers, "prediction": c.text,
               "extracted": sc["extracted"], "correct": bool(sc["correct"]), "formatted": bool(sc["formatted"]),
               "tokens": len(c.token_ids), "finish_reason": c.finish_reason}
        rows.append(row)
        by_cat[s.category or "all"].append(row)
    n = max(1, len(rows))
    metrics = {
        "n": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / n,
        "format_rate": sum(r["formatted"] for r in rows) / n,
        "mean_tokens": sum(r["tokens"] for r in rows) / n,
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / n,
        "skipped_records": bad,
        "per_category": {k: {"n": len(v), "accuracy": sum(r["correct"] for r in v) / len(v)}
                         for k, v in sorted(by_cat.items())},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
