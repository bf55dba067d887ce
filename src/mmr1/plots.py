"""Line charts as standalone SVG: readable in any browser, no plotting library to install."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 360, 220, 56, 12, 28, 34


def _ticks(lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def _panel(title: str, series: dict[str, list[float]], x0: int, y0: int) -> list[str]:
    """One chart: x = step (1-based), y = value; a NaN breaks the line."""
    finite = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    n = max((len(ys) for ys in series.values()), default=1)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def xy(i: int, v: float) -> str:
        x = x0 + PAD_L + (pw * i / (n - 1) if n > 1 else pw / 2)
        y = y0 + PAD_T + ph * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    out = [f'<text x="{x0 + W / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{x0 + PAD_L}" y="{y0 + PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(lo, hi):
        y = y0 + PAD_T + ph * (1 - (t - lo) / (hi - lo))
        out.append(f'<text x="{x0 + PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{t:.3g}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{y0 + H - 6}" text-anchor="middle" font-size="10">'
               f'step (1..{n})</text>')
    for k, (label, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        runs, cur = [], []
        for i, v in enumerate(ys):
            if v is None or not math.isfinite(v):
                runs, cur = runs + [cur] if cur else runs, []
            else:
                cur.append(xy(i, v))
        runs += [cur] if cur else []
        for r in runs:
            out.append(f'<polyline points="{" ".join(r)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = y0 + PAD_T + 12 + 13 * k
        out.append(f'<text x="{x0 + PAD_L + 6}" y="{ly}" font-size="10" fill="{colour}">{escape(label)}</text>')
    return out


def write_line_charts(path: str | Path, panels: list[tuple[str, dict[str, list[float]]]], columns: int = 3) -> Path:
    """Write panels [(title, {label: values per step})] in a grid to `path` (SVG)."""
    rows = max(1, math.ceil(len(panels) / columns))
    cols = min(columns, max(1, len(panels)))
    body = []
    for i, (title, series) in enumerate(panels):
        body += _panel(title, series, (i % columns) * W, (i // columns) * H)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * W}" height="{rows * H}" '
           f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
           + "\n".join(body) + "\n</svg>\n")
    path = Path(path)
    path.write_text(svg)
    return path
