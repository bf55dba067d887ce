"""`mmr1 view RUN --export report.html`: one self-contained HTML file to attach to a paper or an issue.

It is the viewer itself with the server's answers inlined (window.MMR1_EXPORT): every metric curve, every
table and eval set (up to `max_eval_rows` rows each), and a sample of the rollouts (`steps` recorded steps per
part: the first, the last and evenly between) with their images as data URLs. Nothing is fetched when opened.
"""

from __future__ import annotations

import base64
from html import escape as html_escape
import json
import re
import time
from pathlib import Path
from urllib.parse import quote

from .app import static_text
from .data import IMAGE_TYPES, Run, open_runs


def _key(run: int, what: str, **params) -> str:
    """The key app.js's `api()` looks answers up by (its encodeURIComponent, parameters in call order)."""
    return f"{run}/{what}?" + "&".join(f"{k}={quote(str(v), safe=chr(39) + '-_.!~*()')}" for k, v in params.items())


def pick_steps(steps: list[int], n: int) -> list[int]:
    """Up to n steps: the first, the last and evenly spaced between."""
    if n <= 0 or not steps:
        return []
    if len(steps) <= n:
        return list(steps)
    if n == 1:
        return [steps[-1]]
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def _data_url(path: Path | None) -> str | None:
    if path is None:
        return None
    return f"data:{IMAGE_TYPES[path.suffix.lower()]};base64," + base64.b64encode(path.read_bytes()).decode()


def _images(group: dict) -> list[str]:
    out = [p.get("image") for m in group.get("prompt") or [] for p in m.get("content") or []
           if p.get("type") == "image"]
    for c in group.get("completions") or []:
        for t in c.get("turns") or []:
            out += t.get("images") or []
    return [x for x in out if isinstance(x, str)]


def collect(runs: list[Run], steps: int = 3, max_eval_rows: int = 500) -> dict:
    api: dict = {"runs": [r.describe() for r in runs]}
    files: dict = {}
    for r, d in zip(runs, api["runs"]):
        for p in d["parts"]:
            part = p["part"]
            if p["metrics"]:
                api[_key(r.index, "metrics", part=part)] = r.metrics(part)
            if p["rollouts"]:
                chosen = pick_steps(r.steps(part), steps)
                api[_key(r.index, "steps", part=part)] = {"steps": chosen}
                for s in chosen:
                    data = r.rollouts(part, s)
                    api[_key(r.index, "rollouts", part=part, step=s)] = data
                    for rel in (data["base"] + x for g in data["groups"] for x in _images(g)):
                        files.setdefault(f"{r.index}/{rel}", _data_url(r.file(rel)))
        for t in d["tables"]:
            api[_key(r.index, "table", path=t)] = r.table(t)
        for e in d["evals"]:
            ev = r.eval_set(e)
            if len(ev["rows"]) > max_eval_rows:
                ev["note"] = f"first {max_eval_rows} of {len(ev['rows'])} rows"
                ev["rows"] = ev["rows"][:max_eval_rows]
            api[_key(r.index, "eval", name=e)] = ev
    return {"api": api, "files": files, "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _inline(html: str, marker: str, replacement: str) -> str:
    return re.sub(rf"<!--{marker}-->.*?<!--/{marker}-->", lambda _: replacement, html, flags=re.S)


def export(paths: list[str], out: str | Path, steps: int = 3, max_eval_rows: int = 500) -> Path:
    """Write the report; returns its path."""
    runs = open_runs(paths)
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" or "<!--" can end the data
    data = json.dumps(collect(runs, steps, max_eval_rows), separators=(",", ":")).replace("<", "\\u003c")
    js = static_text("app.js").replace("</", "<\\/")
    html = _inline(static_text("index.html"), "STYLE", "<style>\n" + static_text("app.css") + "\n</style>")
    html = _inline(html, "SCRIPT", "<script>\n" + js + "\n</script>")
    title = html_escape(", ".join(r.name for r in runs))
    html = html.replace("<title>mmr1 view</title>", f"<title>mmr1 report: {title}</title>")
    html = html.replace("{{DATA}}", data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
