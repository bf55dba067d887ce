"""BM25 of the local search index: bm25s (what `mmr1.tools.index.BM25` uses) vs the hand-written inverted
index it replaced, side by side in one process, on the shipped entity world's pages.

Retrieval: for every entity, four text queries a searching model writes (its name; "who founded <name>";
"<name> mascot"; "<name> city founded year"), graded by whether the entity's own page comes first (R@1) and
its reciprocal rank (MRR), and how often the two rank lists agree. Speed: index build and query time (each
the median of --rounds runs), at the recipe's corpus size and at a larger one.

    python benchmarks/bm25_index.py            # ~2.5 minutes on 2 shared cores; writes benchmarks/results/bm25_index.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmr1.data.worlds import entities  # noqa: E402
from mmr1.tools.embedders import tokenize  # noqa: E402
from mmr1.tools.index import BM25  # noqa: E402


class HandWrittenBM25:
    """The baseline: mmr1's BM25 before bm25s (term-major CSR postings, scores summed per query term),
    Okapi's tf * (k1 + 1) / (tf + K(D)) with Lucene's idf; it ranks exactly as Lucene's variant."""

    def __init__(self, docs, k1: float = 1.5, b: float = 0.75):
        vocab, postings, lens = {}, [], []
        for d, toks in enumerate(docs):
            lens.append(len(toks))
            for term, tf in Counter(toks).items():
                t = vocab.get(term)
                if t is None:
                    t = vocab[term] = len(vocab)
                    postings.append([])
                postings[t].append((d, tf))
        self.vocab, self.k1 = vocab, k1
        self.indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        self.indptr[1:] = np.cumsum([len(p) for p in postings])
        flat = [x for p in postings for x in p]
        self.docs = np.array([d for d, _ in flat], dtype=np.int32)
        self.tfs = np.array([tf for _, tf in flat], dtype=np.float64)
        dl = np.array(lens, dtype=np.float64)
        self.n_docs = len(dl)
        df = np.diff(self.indptr).astype(np.float64)
        self.idf = np.log1p((self.n_docs - df + 0.5) / (df + 0.5))
        self.norm = k1 * (1.0 - b + b * dl / dl.mean())

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n_docs)
        for term in tokenize(query):
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            d, tf = self.docs[lo:hi], self.tfs[lo:hi]
            out[d] += self.idf[t] * tf * (self.k1 + 1.0) / (tf + self.norm[d])
        return out

    def search(self, query: str, k: int):
        s = self.scores(query)
        pos = np.flatnonzero(s > 0)
        order = pos[np.lexsort((pos, -s[pos]))][:k]
        return [(int(d), float(s[d])) for d in order]


def queries(pages):
    out = []
    for i, p in enumerate(pages):
        name = p["title"]
        out += [(i, name), (i, f"who founded {name}"), (i, f"{name} mascot"), (i, f"{name} city founded year")]
    return out


def median_time(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(n_entities: int, rounds: int, depth: int = 10) -> dict:
    pages = [{"title": e.title, "text": e.text} for e in entities.entities(0, n_entities)]
    docs = [tokenize(f"{p['title']}\n{p['text']}") for p in pages]
    qs = queries(pages)
    row = {"n_docs": len(docs), "n_queries": len(qs)}
    ranked = {}
    for name, build in (("hand_written", lambda: HandWrittenBM25(docs)), ("bm25s", lambda: BM25.fit(docs))):
        t_build, bm = median_time(build, rounds)
        t_query, lists = median_time(lambda bm=bm: [[d for d, _ in bm.search(q, depth)] for _, q in qs], rounds)
        ranks = [lst.index(i) + 1 if i in lst else None for (i, _), lst in zip(qs, lists)]
        ranked[name] = lists
        row[name] = {"build_s": t_build, "query_ms": 1000 * t_query / len(qs),
                     "r_at_1": sum(r == 1 for r in ranks) / len(qs),
                     "mrr_at_10": sum(1 / r for r in ranks if r) / len(qs)}
    row["same_top10_lists"] = sum(a == b for a, b in zip(ranked["hand_written"], ranked["bm25s"])) / len(qs)
    row["same_top1"] = sum(a[:1] == b[:1] for a, b in zip(ranked["hand_written"], ranked["bm25s"])) / len(qs)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 5000],
                    help="entity-world corpus sizes (the MMSearch-R1 CPU recipe indexes 256 entities)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per timing; the median is reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bm25_index.json"))
    a = ap.parse_args()
    rows = [run(n, a.rounds) for n in a.sizes]
    print(f"{'docs':>6} {'impl':>12} {'build s':>9} {'query ms':>9} {'R@1':>6} {'MRR@10':>7}")
    for r in rows:
        for impl in ("hand_written", "bm25s"):
            x = r[impl]
            print(f"{r['n_docs']:>6} {impl:>12} {x['build_s']:>9.3f} {x['query_ms']:>9.3f} {x['r_at_1']:>6.3f} "
                  f"{x['mrr_at_10']:>7.3f}")
        print(f"{'':>6} same top-10 lists: {r['same_top10_lists']:.3f}, same top-1: {r['same_top1']:.3f}")
    out = {"rows": rows, "rounds": a.rounds, "python": sys.version.split()[0],
           "bm25s": __import__("bm25s").__version__}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
