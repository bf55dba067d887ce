// mmr1 view: curves, tables, rollouts and eval predictions of mmr1 runs. Plain JS, no dependencies.
// Live mode asks the server's JSON routes; an exported report carries the same answers in window.MMR1_EXPORT.
"use strict";

const EXPORT = window.MMR1_EXPORT || null;
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563"];
const S = {
  runs: [], tab: "curves", metrics: {}, smooth: 0.6, x: "step", filter: "",
  ro: {key: null, step: null, group: null, data: null, steps: []},
  f: {min: "", max: "", correct: "any", truncated: "any", tool: "any", format: "any"},
  ev: {a: "", b: "", verdict: "all", category: "", changed: false, search: ""},
  evalCache: {}, tableCache: {},
};

// ------------------------------------------------------------------------------------------ data access

function query(params) {
  return Object.keys(params || {}).map(k => k + "=" + encodeURIComponent(params[k])).join("&");
}

async function api(run, what, params) {
  const key = (run === null ? what : run + "/" + what) + (params ? "?" + query(params) : "");
  if (EXPORT) return key in EXPORT.api ? EXPORT.api[key] : null;
  const url = run === null ? "/api/" + what : "/api/run/" + run + "/" + what + (params ? "?" + query(params) : "");
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) return null;
  return r.json();
}

function fileUrl(run, rel) {
  if (!rel) return null;
  if (EXPORT) return EXPORT.files[run + "/" + rel] || null;
  return "/api/run/" + run + "/file/" + rel.split("/").map(encodeURIComponent).join("/");
}

// ------------------------------------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat(Infinity)) if (kid) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}

function fmt(v, d = 3) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") {
    if (!isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(d);
  }
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.map(x => fmt(x, d)).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function notice(text) { document.getElementById("notices").append(h("div", {class: "notice"}, text)); }
function seriesKey(run, part) { return run + "|" + part; }
function partLabel(run, part) {
  const r = S.runs[run];
  return (S.runs.length > 1 || !part ? r.name : "") + (part ? (S.runs.length > 1 ? "/" : "") + part : "");
}
function color(i) { return PALETTE[i % PALETTE.length]; }

// --------------------------------------------------------------------------------------------- loading

async function loadAll() {
  S.runs = (await api(null, "runs")) || [];
  document.getElementById("notices").textContent = "";
  const runsEl = document.getElementById("runs");
  runsEl.textContent = "";
  S.runs.forEach(r => runsEl.append(h("span", {class: "run", title: r.path}, r.name)));
  S.metrics = {};
  let skipped = 0;
  for (const r of S.runs) {
    if (!r.parts.length) notice(r.name + ": no metrics.jsonl or rollouts/ (shown: what the run has)");
    for (const p of r.parts) {
      if (!p.metrics) continue;
      const m = await api(r.index, "metrics", {part: p.part});
      if (!m) continue;
      m.color = color(Object.keys(S.metrics).length);
      S.metrics[seriesKey(r.index, p.part)] = m;
      skipped += m.skipped;
      if (m.skipped) notice(`${partLabel(r.index, p.part)}/metrics.jsonl: ${m.skipped} line(s) skipped (not JSON: a run killed mid-write?)`);
    }
  }
  S.evalCache = {}; S.tableCache = {};
  if (S.ro.key) await loadSteps(false);
  render();
}

// ---------------------------------------------------------------------------------------------- curves

function smoothed(ys, w) {
  if (!w) return ys;
  const out = []; let acc = 0, norm = 0;
  for (const y of ys) {
    if (y === null || !isFinite(y)) { out.push(null); continue; }
    acc = acc * w + (1 - w) * y; norm = norm * w + (1 - w);
    out.push(acc / norm);
  }
  return out;
}

function ticks(lo, hi, n) {
  if (hi === lo) return [lo];
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
  const err = (hi - lo) / n / step;
  const s = step * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
  const out = [];
  for (let t = Math.ceil(lo / s) * s; t <= hi + 1e-12; t += s) out.push(+t.toPrecision(12));
  return out;
}

// series: [{label, color, xs, ys}]
function chart(title, series, opts) {
  opts = opts || {};
  if (opts.intX === undefined) opts.intX = S.x === "step";
  const W = 360, H = 190, L = 46, R = 8, T = 8, B = 24;
  const pts = series.flatMap(s => s.xs.map((x, i) => [x, s.ys[i]])).filter(p => p[1] !== null && isFinite(p[1]) && p[0] !== null);
  const box = h("div", {class: "chart", "data-metric": title});
  box.append(h("h4", {}, title));
  if (!pts.length) { box.append(h("p", {class: "muted"}, "no finite values")); return box; }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (opts.y0 !== undefined) y0 = Math.min(y0, opts.y0);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const g = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
  for (const t of ticks(y0, y1, 4)) {
    g.append(svg("line", {x1: L, x2: W - R, y1: Y(t), y2: Y(t), stroke: "#eef0f4"}));
    g.append(svg("text", {x: L - 4, y: Y(t) + 3, "text-anchor": "end"}, fmt(t, 3)));
  }
  for (const t of ticks(x0, x1, 5)) if (!opts.intX || Number.isInteger(t)) g.append(svg("text", {x: X(t), y: H - 8, "text-anchor": "middle"}, fmt(t, 0)));
  g.append(svg("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#9ca3af"}));
  g.append(svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9ca3af"}));
  const w = opts.smooth === undefined ? S.smooth : opts.smooth;
  for (const s of series) {
    const line = (ys, attrs) => {
      let d = "", pen = false;
      s.xs.forEach((x, i) => {
        const y = ys[i];
        if (y === null || !isFinite(y) || x === null) { pen = false; return; }
        d += (pen ? "L" : "M") + X(x).toFixed(1) + "," + Y(y).toFixed(1); pen = true;
      });
      if (d) g.append(svg("path", Object.assign({d, fill: "none", stroke: s.color, "stroke-width": 1.6, class: "series"}, attrs)));
    };
    if (w > 0 && s.xs.length > 2) { line(s.ys, {opacity: 0.25, "stroke-width": 1}); line(smoothed(s.ys, w), {}); }
    else line(s.ys, {});
    if (s.xs.length === 1) g.append(svg("circle", {cx: X(s.xs[0]), cy: Y(s.ys[0]), r: 3, fill: s.color}));
  }
  // hover: a vertical line and each series' nearest value
  const cursor = svg("line", {y1: T, y2: H - B, stroke: "#9ca3af", "stroke-dasharray": "3,3", visibility: "hidden"});
  g.append(cursor);
  const readout = h("div", {class: "readout"}, "\u00a0");
  g.addEventListener("mousemove", ev => {
    const r = g.getBoundingClientRect();
    const px = (ev.clientX - r.left) / r.width * W;
    if (px < L || px > W - R) return;
    const xv = x0 + (px - L) / (W - L - R) * (x1 - x0);
    cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
    const parts = s2 => {
      let best = -1, d = Infinity;
      s2.xs.forEach((x, i) => { if (x !== null && s2.ys[i] !== null && Math.abs(x - xv) < d) { d = Math.abs(x - xv); best = i; } });
      return best < 0 ? null : `${s2.label} @${fmt(s2.xs[best], 1)}: ${fmt(s2.ys[best], 4)}`;
    };
    readout.textContent = series.map(parts).filter(Boolean).join(" · ") || "\u00a0";
  });
  g.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); readout.textContent = "\u00a0"; });
  box.append(g, readout);
  box.append(h("div", {class: "legend"}, series.map(s => h("span", {}, h("span", {class: "swatch", style: "background:" + s.color}), " " + s.label))));
  return box;
}

function xsOf(rows) {
  if (S.x === "time") {
    const t0 = rows.length ? rows[0].time : 0;
    return rows.map(r => (typeof r.time === "number" ? r.time - t0 : null));
  }
  return rows.map(r => r.step);
}

function renderCurves(main) {
  const controls = h("div", {class: "controls"},
    h("label", {}, "filter ", h("input", {type: "text", id: "metric-filter", value: S.filter, placeholder: "e.g. reward",
      oninput: e => { S.filter = e.target.value; drawGrid(); }})),
    h("label", {}, "smoothing ", h("input", {type: "range", id: "smoothing", min: 0, max: 0.99, step: 0.01, value: S.smooth,
      oninput: e => { S.smooth = +e.target.value; document.getElementById("smooth-val").textContent = S.smooth.toFixed(2); drawGrid(); }}),
      h("span", {id: "smooth-val"}, S.smooth.toFixed(2))),
    h("label", {}, "x ", (() => {
      const sel = h("select", {id: "x-axis", onchange: e => { S.x = e.target.value; drawGrid(); }},
        h("option", {value: "step"}, "step"), h("option", {value: "time"}, "time (s)"));
      sel.value = S.x; return sel;
    })()));
  main.append(controls);
  const tool = h("div", {id: "tool-panel"});
  const grid = h("div", {class: "grid", id: "curves"});
  main.append(tool, grid);
  drawGrid();
}

function toolSeries() {
  const out = [];
  for (const [key, m] of Object.entries(S.metrics)) {
    const [run, part] = [+key.split("|")[0], key.split("|").slice(1).join("|")];
    if (m.tool) out.push({run, part, tool: m.tool, color: m.color});
  }
  return out;
}

function drawGrid() {
  const grid = document.getElementById("curves"), tool = document.getElementById("tool-panel");
  if (!grid) return;
  grid.textContent = ""; tool.textContent = "";
  const keys = Object.keys(S.metrics);
  if (!keys.length) { grid.append(h("p", {class: "muted"}, "No metrics.jsonl in these runs.")); return; }
  // the tool-call rate panel: shown when an RL part logs it, with the collapse warning
  const ts = toolSeries();
  if (ts.length) {
    for (const t of ts) if (t.tool.warning) tool.append(h("div", {class: "warning", id: "tool-warning"}, "⚠ " + partLabel(t.run, t.part) + ": " + t.tool.warning));
    const tg = h("div", {class: "grid"});
    tg.append(chart("tool-call rate", ts.map(t => ({label: partLabel(t.run, t.part), color: t.color, xs: t.tool.steps, ys: t.tool.tool_rate})), {smooth: 0, y0: 0}));
    tg.append(chart("reward (beside the tool-call rate)", ts.map(t => ({label: partLabel(t.run, t.part), color: t.color, xs: t.tool.steps, ys: t.tool.reward})), {smooth: 0}));
    tool.append(tg);
  }
  const metricKeys = new Set();
  for (const m of Object.values(S.metrics)) for (const r of m.rows) for (const [k, v] of Object.entries(r))
    if (k !== "step" && k !== "time" && (typeof v === "number" || v === null)) metricKeys.add(k);
  const filter = S.filter.toLowerCase();
  const rank = k => (k.startsWith("rl/") ? 0 : k.startsWith("sft/") ? 1 : k.startsWith("eval/") ? 2 : 3);
  const sorted = [...metricKeys].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0))
    .filter(k => k.toLowerCase().includes(filter));
  for (const k of sorted) {
    const series = [];
    for (const key of keys) {
      const m = S.metrics[key];
      const rows = m.rows.filter(r => k in r);
      if (!rows.length) continue;
      const [run, part] = [+key.split("|")[0], key.split("|").slice(1).join("|")];
      series.push({label: partLabel(run, part), color: m.color, xs: xsOf(rows), ys: rows.map(r => r[k])});
    }
    if (series.length) grid.append(chart(k, series));
  }
  if (!sorted.length) grid.append(h("p", {class: "muted"}, "No metric matches the filter."));
}

// ---------------------------------------------------------------------------------------------- tables

function isScalar(v) { return v === null || ["number", "string", "boolean"].includes(typeof v) || (Array.isArray(v) && v.every(x => x === null || typeof x !== "object")); }

function tableEl(cols, rows) {
  return h("table", {class: "data"}, h("tr", {}, cols.map(c => h("th", {}, c))),
    rows.map(r => h("tr", {}, r.map(c => h("td", {class: typeof c === "number" ? "num" : null}, fmt(c))))));
}

function renderJson(name, data) {
  const box = h("div", {class: "card table-card"}, h("h3", {}, name));
  if (data === null || data === undefined) { box.append(h("p", {class: "muted"}, "unreadable or absent")); return box; }
  const flat = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Array.isArray(v.columns) && Array.isArray(v.rows)) {
        box.append(h("h4", {}, key), tableEl(v.columns, v.rows));
      } else if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length && Object.values(v).every(x => x && typeof x === "object" && !Array.isArray(x) && Object.values(x).every(isScalar))) {
        const cols = [...new Set(Object.values(v).flatMap(x => Object.keys(x)))];
        box.append(h("h4", {}, key), tableEl([""].concat(cols), Object.entries(v).map(([rk, rv]) => [rk].concat(cols.map(c => rv[c] === undefined ? null : rv[c])))));
      } else if (v && typeof v === "object" && !Array.isArray(v)) {
        walk(v, key);
      } else if (isScalar(v)) {
        flat.push([key, v]);
      } else {
        flat.push([key, JSON.stringify(v).slice(0, 300)]);
      }
    }
  };
  if (typeof data === "object" && !Array.isArray(data)) walk(data, ""); else flat.push(["value", JSON.stringify(data).slice(0, 500)]);
  if (flat.length) box.append(h("h4", {}, "values"), tableEl(["key", "value"], flat));
  return box;
}

async function renderTables(main) {
  let any = false;
  for (const r of S.runs) {
    for (const t of r.tables) {
      any = true;
      const key = r.index + "/" + t;
      if (!(key in S.tableCache)) S.tableCache[key] = await api(r.index, "table", {path: t});
      const res = S.tableCache[key];
      main.append(renderJson(r.name + " / " + t, res ? res.data : null));
    }
    for (const e of r.evals) {
      const ev = await evalSet(r.index, e);
      if (ev && ev.metrics) main.append(renderJson(r.name + " / " + (e ? e + "/" : "") + "metrics.json", ev.metrics));
    }
  }
  if (!any) main.prepend(h("p", {class: "muted"}, "No summary.json or results.json in these runs."));
}

// -------------------------------------------------------------------------------------------- rollouts

function rolloutParts() {
  const out = [];
  for (const r of S.runs) for (const p of r.parts) if (p.rollouts) out.push({run: r.index, part: p.part, key: r.index + "|" + p.part});
  return out;
}

async function loadSteps(resetStep) {
  const [run, part] = [+S.ro.key.split("|")[0], S.ro.key.split("|").slice(1).join("|")];
  const res = await api(run, "steps", {part});
  S.ro.steps = res ? res.steps : [];
  if (resetStep || S.ro.step === null || !S.ro.steps.includes(S.ro.step)) S.ro.step = S.ro.steps.length ? S.ro.steps[S.ro.steps.length - 1] : null;
  await loadStep();
}

async function loadStep() {
  S.ro.data = null;
  if (S.ro.step === null) return;
  const [run, part] = [+S.ro.key.split("|")[0], S.ro.key.split("|").slice(1).join("|")];
  S.ro.data = await api(run, "rollouts", {part, step: S.ro.step});
  if (S.ro.data && S.ro.data.groups.length && (S.ro.group === null || S.ro.group >= S.ro.data.groups.length)) S.ro.group = 0;
}

// body[data-ready] is empty while an action loads and re-renders (tests wait for it)
async function busy(fn) {
  document.body.dataset.ready = "";
  try { await fn(); } finally { document.body.dataset.ready = S.tab; }
}

function tri(v, want) { return want === "any" || (want === "yes" ? v === true : v === false); }

function passes(c) {
  const f = S.f;
  if (f.min !== "" && !(c.reward !== null && c.reward >= +f.min)) return false;
  if (f.max !== "" && !(c.reward !== null && c.reward <= +f.max)) return false;
  if (!tri(c.correct, f.correct)) return false;
  if (!tri(c.truncated, f.truncated)) return false;
  if (!tri(c.used_tool, f.tool)) return false;
  if (f.format !== "any" && !tri(c.format_ok === null ? null : !c.format_ok, f.format)) return false;
  return true;
}

function filterSelect(id, key, label) {
  const sel = h("select", {id, onchange: e => { S.f[key] = e.target.value; renderRollouts(document.getElementById("main"), true); }},
    h("option", {value: "any"}, "any"), h("option", {value: "yes"}, "yes"), h("option", {value: "no"}, "no"));
  sel.value = S.f[key];
  return h("label", {}, label + " ", sel);
}

async function renderRollouts(main, keep) {
  main.textContent = "";
  const parts = rolloutParts();
  if (!parts.length) {
    main.append(h("p", {class: "muted", id: "no-rollouts"}, "No rollouts recorded in these runs (written before mmr1 recorded them, or with logging.rollouts.enabled=false)."));
    return;
  }
  if (!S.ro.key || !parts.some(p => p.key === S.ro.key)) { S.ro.key = parts[parts.length - 1].key; await loadSteps(true); }
  else if (!keep && !S.ro.data) await loadSteps(false);
  const run = +S.ro.key.split("|")[0];
  const side = h("div", {class: "side"});
  const partSel = h("select", {id: "ro-part", onchange: e => busy(async () => { S.ro.key = e.target.value; S.ro.group = 0; await loadSteps(true); await renderRollouts(main, true); })},
    parts.map(p => h("option", {value: p.key}, partLabel(p.run, p.part) || S.runs[p.run].name)));
  partSel.value = S.ro.key;
  side.append(h("h3", {}, "run part"), partSel);
  const go = s => busy(async () => { S.ro.step = s; S.ro.group = 0; await loadStep(); await renderRollouts(main, true); });
  let stepsEl;
  if (S.ro.steps.length <= 60) {
    stepsEl = h("div", {class: "steps", id: "ro-steps"}, S.ro.steps.map(s => h("button", {class: s === S.ro.step ? "on" : null, "data-step": s, onclick: () => go(s)}, s)));
  } else {  // a long run: a list of steps with previous / next
    const at = S.ro.steps.indexOf(S.ro.step);
    const sel = h("select", {id: "ro-step-select", onchange: e => go(+e.target.value)}, S.ro.steps.map(s => h("option", {value: s}, s)));
    sel.value = S.ro.step;
    stepsEl = h("div", {class: "steps", id: "ro-steps"},
      h("button", {disabled: at <= 0 ? true : null, onclick: () => go(S.ro.steps[0])}, "«"),
      h("button", {disabled: at <= 0 ? true : null, onclick: () => go(S.ro.steps[at - 1])}, "‹"), sel,
      h("button", {disabled: at >= S.ro.steps.length - 1 ? true : null, onclick: () => go(S.ro.steps[at + 1])}, "›"),
      h("button", {disabled: at >= S.ro.steps.length - 1 ? true : null, onclick: () => go(S.ro.steps[S.ro.steps.length - 1])}, "»"));
  }
  side.append(h("h3", {}, `step (${S.ro.steps.length} recorded)`), stepsEl);
  side.append(h("h3", {}, "filters"), h("div", {class: "filters", id: "ro-filters"},
    h("label", {}, "reward ≥ ", h("input", {type: "number", step: "any", id: "f-min", value: S.f.min, style: "width:70px",
      onchange: e => { S.f.min = e.target.value; renderRollouts(main, true); }})),
    h("label", {}, "reward ≤ ", h("input", {type: "number", step: "any", id: "f-max", value: S.f.max, style: "width:70px",
      onchange: e => { S.f.max = e.target.value; renderRollouts(main, true); }})),
    filterSelect("f-correct", "correct", "correct"), filterSelect("f-truncated", "truncated", "truncated"),
    filterSelect("f-tool", "tool", "used a tool"), filterSelect("f-format", "format", "format failure"),
    h("button", {id: "f-failures", onclick: () => { S.f.correct = "no"; renderRollouts(main, true); }}, "failures only"), " ",
    h("button", {id: "f-reset", onclick: () => { S.f = {min: "", max: "", correct: "any", truncated: "any", tool: "any", format: "any"}; renderRollouts(main, true); }}, "clear")));
  const content = h("div", {id: "ro-content"});
  main.append(h("div", {class: "layout"}, side, content));
  const data = S.ro.data;
  if (!data) { content.append(h("p", {class: "muted"}, S.ro.step === null ? "No steps recorded yet." : "This step is not available" + (EXPORT ? " in this export." : "."))); return; }
  if (data.skipped) content.append(h("div", {class: "notice"}, `step ${S.ro.step}: ${data.skipped} line(s) skipped (not JSON: the run was killed mid-write?)`));
  const groups = data.groups.map((g, gi) => ({g, gi, shown: g.completions.filter(passes)}));
  side.append(h("h3", {}, "groups"), h("div", {class: "groups", id: "ro-groups"}, groups.map(({g, gi, shown}) => {
    const rewards = g.completions.map(c => c.reward).filter(x => x !== null);
    const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
    const nc = g.completions.filter(c => c.correct).length;
    return h("button", {class: "group" + (gi === S.ro.group ? " on" : ""), "data-group": gi, disabled: shown.length ? null : true,
      onclick: () => { S.ro.group = gi; renderRollouts(main, true); }},
      g.kind === "sft" ? `#${gi} ${g.sample_id || ""} · gold ${fmt(g.gold)}`
        : `#${gi} ${g.sample_id || ""} · r̄ ${fmt(mean, 2)} · ${nc}/${g.completions.length} correct · ${shown.length} shown`);
  })));
  const cur = groups[S.ro.group] || groups[0];
  if (!cur) { content.append(h("p", {class: "muted"}, "No groups in this step.")); return; }
  content.append(renderGroup(run, data.base, cur.g, cur.shown));
}

function imageEl(run, base, rel, alt) {
  const src = fileUrl(run, rel ? base + rel : null);
  const absent = () => h("span", {class: "muted"}, "[image absent]");
  return src ? h("img", {class: "inline", src, alt: alt || rel, title: rel, onerror: e => e.target.replaceWith(absent())}) : absent();
}

function renderGroup(run, base, g, shown) {
  const box = h("div", {id: "group"});
  const head = h("div", {class: "card prompt"}, h("h3", {}, `step ${g.step} · group ${g.group} · ${g.kind || ""} · sample ${g.sample_id || "?"}`),
    h("div", {class: "kv"}, `gold: ${fmt(g.gold)} · category: ${g.category || "—"}`));
  for (const m of g.prompt || []) {
    head.append(h("div", {class: "msg masked-prompt"}, h("div", {class: "role"}, m.role),
      (m.content || []).map(p => p.type === "image" ? imageEl(run, base, p.image, "prompt image") : h("div", {class: "turn masked", title: "prompt: outside the loss mask"}, p.text))));
  }
  box.append(head);
  if (!shown.length) box.append(h("p", {class: "muted"}, "No completion of this group passes the filters."));
  for (const c of shown) box.append(renderCompletion(run, base, c));
  return box;
}

function renderCompletion(run, base, c) {
  const cls = c.correct === true ? "correct" : c.correct === false ? "wrong" : "";
  const card = h("div", {class: "card completion " + cls, "data-index": c.index});
  const b = (text, kind) => h("span", {class: "badge " + (kind || "")}, text);
  card.append(h("div", {class: "badges"},
    b("#" + c.index), c.reward === null ? b("SFT target (no reward)") : b("reward " + fmt(c.reward)),
    c.advantage === null ? null : b("advantage " + fmt(c.advantage), c.advantage > 0 ? "good" : c.advantage < 0 ? "bad" : ""),
    c.correct === null || c.correct === undefined ? null : b(c.correct ? "correct" : "wrong", c.correct ? "good" : "bad"),
    c.format_ok === false ? b("format failure", "bad") : null, c.truncated ? b("truncated", "bad") : null,
    c.used_tool ? b("used a tool") : null, c.finish_reason ? b("finish: " + c.finish_reason) : null,
    c.answer !== undefined && c.answer !== null ? b("answer: " + c.answer) : null,
    c.tokens ? b(c.tokens.total !== undefined ? `tokens: ${c.tokens.total}, ${c.tokens.in_loss} in loss`
      : `tokens: ${c.tokens.sampled} sampled, ${c.tokens.injected} injected, ${c.tokens.in_loss} in loss`) : null,
    c.logprob && c.logprob.mean !== undefined ? b(`log p mean ${fmt(c.logprob.mean, 2)} min ${fmt(c.logprob.min, 2)} · entropy≈${fmt(c.logprob.entropy_est, 2)}`) : null));
  const rw = Object.entries(c.rewards || {});
  if (rw.length) card.append(h("table", {class: "data rewards"}, h("tr", {}, rw.map(([k]) => h("th", {}, k)), h("th", {}, "total"), h("th", {}, "advantage")),
    h("tr", {}, rw.map(([, v]) => h("td", {class: "num"}, fmt(v))), h("td", {class: "num"}, fmt(c.reward)), h("td", {class: "num"}, fmt(c.advantage)))));
  const tr = h("div", {class: "transcript"});
  for (const t of c.turns || []) {
    if (t.type === "assistant") tr.append(h("div", {class: "turn assistant" + (t.loss === false ? " masked" : ""), title: t.loss === false ? "outside the loss mask" : "in the loss"},
      h("div", {class: "role"}, `assistant · round ${t.round}` + (t.finish ? ` · ${t.finish}` : "") + (t.scripted ? " · scripted" : "") + (t.loss === false ? " · not in loss" : "")), t.text));
    else if (t.type === "tool_call") tr.append(h("div", {class: "tool-call " + (t.status || "")},
      `tool call: ${t.tool}(${t.query}) → ${t.status}` + (t.error ? ` (${t.error})` : "") + (t.latency_s ? ` · ${fmt(t.latency_s, 3)} s` : "")));
    else if (t.type === "observation") tr.append(h("div", {class: "turn observation masked", title: "tool observation: outside the loss mask"},
      h("div", {class: "role"}, `observation (${t.tool}) · ${t.tokens || 0} tokens · not in loss`), (t.images || []).map(im => imageEl(run, base, im, "tool image")), h("div", {}, t.text)));
  }
  card.append(tr);
  if (c.segments && c.segments.length) {
    card.append(h("details", {open: true, class: "token-view"}, h("summary", {}, "tokens by loss mask",
      h("span", {class: "legend-box seg loss"}), "in loss", h("span", {class: "legend-box masked"}), "outside (shaded)"),
      h("div", {class: "segments"}, c.segments.map(s => h("span", {class: "seg " + (s.loss ? "loss" : "masked"), title: s.loss ? "in the loss" : "outside the loss mask"}, s.text)))));
  }
  return card;
}

// ----------------------------------------------------------------------------------------------- evals

async function evalSet(run, name) {
  const key = run + "/" + name;
  if (!(key in S.evalCache)) S.evalCache[key] = await api(run, "eval", {name});
  return S.evalCache[key];
}

function evalOptions() {
  const out = [];
  for (const r of S.runs) for (const e of r.evals) out.push({value: r.index + "/" + e, label: r.name + " / " + (e || "(root)"), run: r.index, name: e});
  return out;
}

async function renderEvals(main) {
  const opts = evalOptions();
  if (!opts.length) { main.append(h("p", {class: "muted"}, "No predictions.jsonl in these runs.")); return; }
  if (!S.ev.a || !opts.some(o => o.value === S.ev.a)) S.ev.a = opts[opts.length - 1].value;
  const pick = v => opts.find(o => o.value === v);
  const A = await evalSet(pick(S.ev.a).run, pick(S.ev.a).name);
  const B = S.ev.b && pick(S.ev.b) ? await evalSet(pick(S.ev.b).run, pick(S.ev.b).name) : null;
  const rerender = () => { main.textContent = ""; renderEvals(main); };
  const selA = h("select", {id: "ev-a", onchange: e => { S.ev.a = e.target.value; rerender(); }}, opts.map(o => h("option", {value: o.value}, o.label)));
  selA.value = S.ev.a;
  const selB = h("select", {id: "ev-b", onchange: e => { S.ev.b = e.target.value; rerender(); }}, h("option", {value: ""}, "— (no comparison)"), opts.map(o => h("option", {value: o.value}, o.label)));
  selB.value = S.ev.b;
  const cats = [...new Set((A ? A.rows : []).concat(B ? B.rows : []).map(r => r.category).filter(c => c !== null && c !== undefined))].sort();
  const selV = h("select", {id: "ev-verdict", onchange: e => { S.ev.verdict = e.target.value; rerender(); }},
    ["all", "correct", "wrong"].map(v => h("option", {value: v}, v)));
  selV.value = S.ev.verdict;
  const selC = h("select", {id: "ev-category", onchange: e => { S.ev.category = e.target.value; rerender(); }}, h("option", {value: ""}, "all"), cats.map(c => h("option", {value: c}, c)));
  selC.value = S.ev.category;
  main.append(h("div", {class: "controls"}, h("label", {}, "eval set ", selA), h("label", {}, "compare with ", selB),
    h("label", {}, "verdict ", selV), h("label", {}, "category ", selC),
    B ? h("label", {}, h("input", {type: "checkbox", id: "ev-changed", checked: S.ev.changed ? true : null, onchange: e => { S.ev.changed = e.target.checked; rerender(); }}), " changed only") : null));
  if (!A) { main.append(h("p", {class: "muted"}, "eval set absent")); return; }
  if (A.skipped) main.append(h("div", {class: "notice"}, `${A.skipped} line(s) of predictions.jsonl skipped (not JSON)`));
  const catOk = r => !S.ev.category || r.category === S.ev.category;
  const verdictOk = v => S.ev.verdict === "all" || (S.ev.verdict === "correct" ? v === true : v === false);
  if (!B) {
    const rows = A.rows.filter(r => catOk(r) && verdictOk(r.correct));
    const n = A.rows.length, nc = A.rows.filter(r => r.correct).length;
    main.append(h("p", {id: "ev-summary"}, `${rows.length} shown of ${n} · accuracy ${fmt(n ? nc / n : null)}`));
    main.append(h("table", {class: "data", id: "ev-table"}, h("tr", {}, ["id", "category", "gold", "extracted", "verdict", "finish", "prediction"].map(c => h("th", {}, c))),
      rows.slice(0, 1000).map(r => h("tr", {}, h("td", {}, r.id), h("td", {}, r.category || "—"), h("td", {}, fmt(r.gold)), h("td", {}, fmt(r.extracted)),
        h("td", {class: r.correct ? "good" : "bad"}, r.correct === null ? "—" : r.correct ? "correct" : "wrong"), h("td", {}, r.finish || "—"), h("td", {class: "pred"}, r.prediction)))));
    return;
  }
  const byId = new Map(B.rows.map(r => [r.id, r]));
  const joined = A.rows.filter(r => byId.has(r.id)).map(a => ({a, b: byId.get(a.id)}));
  const kind = ({a, b}) => a.correct === b.correct ? (a.correct ? "both right" : "both wrong") : (b.correct ? "fixed" : "broken");
  const counts = {};
  for (const j of joined) counts[kind(j)] = (counts[kind(j)] || 0) + 1;
  const rows = joined.filter(j => catOk(j.a) && (verdictOk(j.a.correct) || verdictOk(j.b.correct)) && (!S.ev.changed || j.a.correct !== j.b.correct || j.a.extracted !== j.b.extracted));
  main.append(h("p", {id: "ev-summary"}, `${joined.length} shared ids (A ${A.rows.length}, B ${B.rows.length}) · fixed by B: ${counts["fixed"] || 0} · broken by B: ${counts["broken"] || 0} · both right: ${counts["both right"] || 0} · both wrong: ${counts["both wrong"] || 0} · ${rows.length} shown`));
  main.append(h("table", {class: "data", id: "ev-compare"}, h("tr", {}, ["id", "category", "gold", "A extracted", "A verdict", "B extracted", "B verdict", "change", "A prediction", "B prediction"].map(c => h("th", {}, c))),
    rows.slice(0, 1000).map(j => {
      const k = kind(j);
      return h("tr", {class: k === "fixed" ? "changed-fixed" : k === "broken" ? "changed-broken" : null},
        h("td", {}, j.a.id), h("td", {}, j.a.category || "—"), h("td", {}, fmt(j.a.gold)),
        h("td", {}, fmt(j.a.extracted)), h("td", {class: j.a.correct ? "good" : "bad"}, j.a.correct ? "correct" : "wrong"),
        h("td", {}, fmt(j.b.extracted)), h("td", {class: j.b.correct ? "good" : "bad"}, j.b.correct ? "correct" : "wrong"),
        h("td", {}, k), h("td", {class: "pred"}, j.a.prediction), h("td", {class: "pred"}, j.b.prediction));
    })));
}

// ---------------------------------------------------------------------------------------------- shell

async function render() {
  const main = document.getElementById("main");
  main.textContent = "";
  document.querySelectorAll("#tabs button").forEach(b => b.classList.toggle("on", b.dataset.tab === S.tab));
  if (S.tab === "curves") renderCurves(main);
  else if (S.tab === "tables") await renderTables(main);
  else if (S.tab === "rollouts") await renderRollouts(main, false);
  else if (S.tab === "evals") await renderEvals(main);
  document.body.dataset.ready = S.tab;
}

let timer = null;
document.querySelectorAll("#tabs button").forEach(b => b.addEventListener("click", () => { S.tab = b.dataset.tab; document.body.dataset.ready = ""; render(); }));
if (EXPORT) {
  document.getElementById("refresh").style.display = "none";
  document.getElementById("auto-label").style.display = "none";
  document.getElementById("mode").textContent = "exported " + (EXPORT.created || "") + " · a sample of the rollouts";
} else {
  document.getElementById("refresh").addEventListener("click", () => { document.body.dataset.ready = ""; S.ro.data = null; loadAll(); });
  document.getElementById("auto").addEventListener("change", e => {
    clearInterval(timer);
    if (e.target.checked) timer = setInterval(() => { if (S.tab === "curves" || S.tab === "rollouts") { S.ro.data = null; loadAll(); } }, 5000);
  });
}
loadAll();
