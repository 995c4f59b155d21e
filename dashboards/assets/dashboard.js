// The dashboard page: reads the embedded document (dashboards/data.py), applies the API and time
// filters, sums the rows and draws every panel as SVG or HTML bars. No network access, no library:
// the file must open from disk and in locked-down browsers alike.
"use strict";

const FORMAT = 1;
const COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#e53e3e",
  "#718096"];
const errors = [];

function reportError(message) {
  errors.push(String(message));
  const box = document.getElementById("errors");
  if (box) {
    box.hidden = false;
    const li = document.createElement("li");
    li.textContent = String(message);
    box.querySelector("ul").appendChild(li);
  }
  document.body.dataset.errors = String(errors.length);
}
window.addEventListener("error", (e) => reportError(e.message));
window.addEventListener("unhandledrejection", (e) => reportError(e.reason));

const fmtInt = (v) => Math.round(v).toLocaleString("en-US");
const fmtMs = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
const fmtPct = (v) => (v === null || v === undefined || !isFinite(v) ? "–" : v.toFixed(2) + "%");

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children || []) node.appendChild(c);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// The numbers behind a panel, exact (data-value holds the unformatted value).
function numbersTable(name, headers, rows) {
  const table = el("table", { class: "data", "data-panel": name });
  table.appendChild(el("thead", {}, [el("tr", {}, headers.map((h) => el("th", { text: h })))]));
  const body = el("tbody");
  for (const row of rows) {
    body.appendChild(el("tr", {}, row.map((cell) => {
      const td = el("td", { text: cell.text });
      if (cell.value !== undefined) td.setAttribute("data-value", cell.value === null ? "" : String(cell.value));
      return td;
    })));
  }
  table.appendChild(body);
  const details = el("details", {}, [el("summary", { text: "Numbers" }), table]);
  return details;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function shortTime(iso, gran) {
  const d = iso.replace("T", " ").replace("Z", "");
  if (gran === "month") return d.slice(0, 7);
  if (gran === "day") return d.slice(0, 10);
  return d.slice(5, 16);
}

// A line chart: labels on x, one path per series (values may hold null gaps).
function lineChart(labels, series, yFormat, gran) {
  const W = 960, H = 260, L = 64, R = 12, T = 10, B = 28;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
  const x = (i) => L + (labels.length <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (labels.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svg.appendChild(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const t = svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    t.textContent = yFormat(v);
    svg.appendChild(t);
  }
  const step = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, i) => {
    if (i % step) return;
    const t = svgEl("text", { x: x(i), y: H - 8, "text-anchor": "middle" });
    t.textContent = shortTime(label, gran);
    svg.appendChild(t);
  });
  series.forEach((s, n) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    const path = svgEl("path", { class: "series", d: d, stroke: s.color || COLORS[n % COLORS.length],
      "data-series": s.name });
    svg.appendChild(path);
    if (labels.length <= 120) {
      s.values.forEach((v, i) => {
        if (v === null) return;
        const c = svgEl("circle", { cx: x(i), cy: y(v), r: 2.2, fill: s.color || COLORS[n % COLORS.length] });
        const title = svgEl("title");
        title.textContent = `${s.name} ${shortTime(labels[i], gran)}: ${yFormat(v)}`;
        c.appendChild(title);
        svg.appendChild(c);
      });
    }
  });
  const legend = el("div", { class: "legend" }, series.map((s, n) => {
    const i = el("i");
    i.style.background = s.color || COLORS[n % COLORS.length];
    return el("span", {}, [i, document.createTextNode(s.name)]);
  }));
  return el("div", {}, [legend, svg]);
}

// Horizontal bars: rows of {label, title, value, text, ratio, cls}.
function barList(rows) {
  const body = el("tbody");
  for (const r of rows) {
    const fill = el("div", { class: "fill " + (r.cls || "") });
    fill.style.width = `${Math.max(0, Math.min(1, r.ratio)) * 100}%`;
    body.appendChild(el("tr", {}, [
      el("td", { class: "name", text: r.label, title: r.title || r.label }),
      el("td", { class: "bar" }, [fill]),
      el("td", { class: "num", text: r.text }),
    ]));
  }
  return el("table", { class: "bars" }, [body]);
}

function readData() {
  const doc = JSON.parse(document.getElementById("dashboard-data").textContent);
  if (doc.format !== FORMAT) throw new Error(`dashboard data format ${doc.format}, this page reads ${FORMAT}`);
  return doc;
}

function readHash(doc) {
  const p = new URLSearchParams(location.hash.slice(1));
  const api = p.get("api") || "";
  let from = doc.buckets.indexOf(p.get("from") || "");
  let to = doc.buckets.indexOf(p.get("to") || "");  // "to" names the last bucket shown
  if (from < 0) from = 0;
  if (to < 0 || to < from) to = doc.buckets.length - 1;
  return { api: doc.apis.includes(api) ? api : "", from, to };
}

function writeHash(doc, state) {
  const p = new URLSearchParams();
  if (state.api) p.set("api", state.api);
  if (state.from > 0) p.set("from", doc.buckets[state.from]);
  if (state.to < doc.buckets.length - 1) p.set("to", doc.buckets[state.to]);
  const hash = p.toString();
  if (location.hash.slice(1) !== hash) history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
}

function setupFilters(doc, state, onChange) {
  const api = document.getElementById("filter-api");
  for (const name of doc.apis) api.appendChild(el("option", { value: name, text: name }));
  const from = document.getElementById("filter-from");
  const to = document.getElementById("filter-to");
  doc.buckets.forEach((b, i) => {
    from.appendChild(el("option", { value: String(i), text: shortTime(b, doc.granularity) }));
    to.appendChild(el("option", { value: String(i), text: shortTime(b, doc.granularity) }));
  });
  const sync = () => { api.value = state.api; from.value = String(state.from); to.value = String(state.to); };
  sync();
  const changed = () => {
    state.api = api.value;
    state.from = Number(from.value);
    state.to = Math.max(state.from, Number(to.value));
    sync();
    onChange();
  };
  api.addEventListener("change", changed);
  from.addEventListener("change", changed);
  to.addEventListener("change", changed);
  document.getElementById("filter-reset").addEventListener("click", () => {
    state.from = 0; state.to = doc.buckets.length - 1; sync(); onChange();
  });
  window.addEventListener("hashchange", () => { Object.assign(state, readHash(doc)); sync(); onChange(); });
}

function panel(id, content, numbers) {
  const box = document.querySelector(`#panel-${id} .chart`);
  box.replaceChildren(content);
  if (numbers) box.appendChild(numbers);
}

function empty(text) { return el("p", { class: "empty", text: text || "No usage in this range." }); }

function render(doc, state) {
  writeHash(doc, state);
  const apiIx = state.api ? doc.apis.indexOf(state.api) : -1;
  const keep = (b, a) => b >= state.from && b <= state.to && (apiIx < 0 || a === apiIx);
  const labels = doc.buckets.slice(state.from, state.to + 1);
  const n = labels.length;
  document.querySelectorAll(".gran").forEach((g) => { g.textContent = doc.granularity; });
  document.body.dataset.api = state.api;
  document.body.dataset.from = labels[0] || "";
  document.body.dataset.to = labels[n - 1] || "";

  // Traffic and errors per (bucket, API).
  const perApi = new Map();
  const totals = { requests: 0, e4: 0, e5: 0, thr: 0, faults: 0 };
  const perBucket = Array.from({ length: n }, () => ({ requests: 0, e4: 0, e5: 0, thr: 0 }));
  const trafficRows = [];
  for (const [b, a, req, e4, e5, thr, faults] of doc.traffic) {
    if (!keep(b, a)) continue;
    const name = doc.apis[a];
    if (!perApi.has(name)) perApi.set(name, { total: 0, values: new Array(n).fill(0) });
    const s = perApi.get(name);
    s.total += req;
    s.values[b - state.from] += req;
    const pb = perBucket[b - state.from];
    pb.requests += req; pb.e4 += e4; pb.e5 += e5; pb.thr += thr;
    totals.requests += req; totals.e4 += e4; totals.e5 += e5; totals.thr += thr; totals.faults += faults;
    trafficRows.push([b, name, req]);
  }
  const ranked = [...perApi.entries()].sort((p, q) => q[1].total - p[1].total || (p[0] < q[0] ? -1 : 1));
  const shown = ranked.slice(0, 8).map(([name, s]) => ({ name, values: s.values }));
  if (ranked.length > 8) {
    const rest = new Array(n).fill(0);
    for (const [, s] of ranked.slice(8)) s.values.forEach((v, i) => { rest[i] += v; });
    shown.push({ name: `${ranked.length - 8} other APIs`, values: rest, color: COLORS[8] });
  }
  trafficRows.sort((p, q) => p[0] - q[0] || (p[1] < q[1] ? -1 : 1));

  // Summary tiles.
  const busiest = ranked.length ? ranked[0][0] : "–";
  const tiles = [
    ["requests", "Requests", fmtInt(totals.requests), totals.requests],
    ["errors_4xx", "4xx responses", fmtInt(totals.e4), totals.e4],
    ["errors_5xx", "5xx responses", fmtInt(totals.e5), totals.e5],
    ["throttled_out", "Throttled out", fmtInt(totals.thr), totals.thr],
    ["faults", "Faults", fmtInt(totals.faults), totals.faults],
    ["busiest_api", "Busiest API", busiest, busiest],
  ];
  document.getElementById("summary").replaceChildren(...tiles.map(([key, label, text, value]) =>
    el("div", { class: "tile", "data-tile": key, "data-value": String(value) },
      [el("div", { class: "label", text: label }), el("div", { class: "value", text: text })])));

  if (!totals.requests) {
    for (const id of ["traffic", "applications", "tiers", "latency", "errors", "quota"]) panel(id, empty());
    document.body.dataset.rendered = "1";
    return;
  }
  panel("traffic", lineChart(labels, shown, fmtInt, doc.granularity),
    numbersTable("traffic", ["bucket", "api", "requests"], trafficRows.map(([b, name, req]) =>
      [{ text: doc.buckets[b], value: doc.buckets[b] }, { text: name, value: name }, { text: fmtInt(req), value: req }])));

  // Top applications.
  const apps = new Map();
  for (const [b, a, p, req] of doc.application_usage) if (keep(b, a)) apps.set(p, (apps.get(p) || 0) + req);
  const topApps = [...apps.entries()].sort((p, q) => q[1] - p[1] || p[0] - q[0]).slice(0, 10);
  const appMax = topApps.length ? topApps[0][1] : 1;
  const appLabel = (p) => doc.applications[p][1] || doc.applications[p][0];
  panel("applications", barList(topApps.map(([p, req]) => ({ label: appLabel(p), title: doc.applications[p][0],
    ratio: req / appMax, text: fmtInt(req) }))),
    numbersTable("applications", ["application_id", "application", "requests"], topApps.map(([p, req]) =>
      [{ text: doc.applications[p][0], value: doc.applications[p][0] }, { text: doc.applications[p][1] },
        { text: fmtInt(req), value: req }])));

  // Tiers.
  const tiers = new Map();
  for (const [b, a, ti, req] of doc.tier_usage) if (keep(b, a)) tiers.set(ti, (tiers.get(ti) || 0) + req);
  const tierRows = [...tiers.entries()].sort((p, q) => q[1] - p[1] || p[0] - q[0]);
  panel("tiers", barList(tierRows.map(([ti, req]) => ({ label: doc.tiers[ti] || "(none)", ratio: req / tierRows[0][1],
    text: `${fmtInt(req)} · ${fmtPct((100 * req) / totals.requests)}` }))),
    numbersTable("tiers", ["tier", "requests", "share"], tierRows.map(([ti, req]) =>
      [{ text: doc.tiers[ti], value: doc.tiers[ti] }, { text: fmtInt(req), value: req },
        { text: fmtPct((100 * req) / totals.requests) }])));

  // Latency percentiles per bucket (computed from summed histograms when the page was built).
  const lat = { p50: new Array(n).fill(null), p95: new Array(n).fill(null), p99: new Array(n).fill(null) };
  const latRows = apiIx < 0 ? doc.latency_all.map(([b, p50, p95, p99]) => [b, p50, p95, p99])
    : doc.latency_by_api.filter((r) => r[1] === apiIx).map(([b, , p50, p95, p99]) => [b, p50, p95, p99]);
  const latShown = latRows.filter(([b]) => b >= state.from && b <= state.to).sort((p, q) => p[0] - q[0]);
  for (const [b, p50, p95, p99] of latShown) {
    lat.p50[b - state.from] = p50; lat.p95[b - state.from] = p95; lat.p99[b - state.from] = p99;
  }
  panel("latency", lineChart(labels, [{ name: "p50", values: lat.p50 }, { name: "p95", values: lat.p95 },
    { name: "p99", values: lat.p99 }], fmtMs, doc.granularity),
    numbersTable("latency", ["bucket", "p50_ms", "p95_ms", "p99_ms"], latShown.map(([b, p50, p95, p99]) =>
      [{ text: doc.buckets[b], value: doc.buckets[b] }, { text: fmtMs(p50), value: p50 },
        { text: fmtMs(p95), value: p95 }, { text: fmtMs(p99), value: p99 }])));

  // Error and throttled-out rates.
  const rate = (k) => perBucket.map((pb) => (pb.requests ? (100 * pb[k]) / pb.requests : null));
  const errRows = perBucket.map((pb, i) => [state.from + i, pb]).filter(([, pb]) => pb.requests > 0);
  panel("errors", lineChart(labels, [{ name: "4xx", values: rate("e4"), color: COLORS[1] },
    { name: "5xx", values: rate("e5"), color: COLORS[7] }, { name: "throttled out", values: rate("thr"), color: COLORS[3] }],
  (v) => v.toFixed(1) + "%", doc.granularity),
  numbersTable("errors", ["bucket", "requests", "errors_4xx", "errors_5xx", "throttled_out", "4xx %", "5xx %",
    "throttled %"], errRows.map(([b, pb]) => [{ text: doc.buckets[b], value: doc.buckets[b] },
    { text: fmtInt(pb.requests), value: pb.requests }, { text: fmtInt(pb.e4), value: pb.e4 },
    { text: fmtInt(pb.e5), value: pb.e5 }, { text: fmtInt(pb.thr), value: pb.thr },
    { text: fmtPct((100 * pb.e4) / pb.requests) }, { text: fmtPct((100 * pb.e5) / pb.requests) },
    { text: fmtPct((100 * pb.thr) / pb.requests) }])));

  // Quota: per subscription, the highest use of its quota in any window inside the range.
  const peaks = new Map();
  for (const [b, k, used] of doc.quota_usage) {
    const [, , , a] = doc.quota_keys[k];
    if (!keep(b, a)) continue;
    peaks.set(k, Math.max(peaks.get(k) || 0, used));
  }
  const quotaRows = [...peaks.entries()].map(([k, used]) => [k, used, used / doc.quota_keys[k][2]])
    .sort((p, q) => q[2] - p[2] || (doc.quota_keys[p[0]][0] < doc.quota_keys[q[0]][0] ? -1 : 1)).slice(0, 10);
  panel("quota", quotaRows.length ? barList(quotaRows.map(([k, used, ratio]) => ({
    label: doc.quota_keys[k][4], title: doc.quota_keys[k][0], ratio, cls: ratio >= 1 ? "over" : ratio >= 0.8 ? "near" : "",
    text: `${fmtInt(used)} / ${fmtInt(doc.quota_keys[k][2])} (${doc.quota_keys[k][1]}) · ${fmtPct(100 * ratio)}`,
  }))) : empty("No subscription with a limited quota in this range."),
  numbersTable("quota", ["throttle_key", "policy", "quota", "peak_used", "peak_pct"], quotaRows.map(([k, used, ratio]) =>
    [{ text: doc.quota_keys[k][0], value: doc.quota_keys[k][0] }, { text: doc.quota_keys[k][1], value: doc.quota_keys[k][1] },
      { text: fmtInt(doc.quota_keys[k][2]), value: doc.quota_keys[k][2] }, { text: fmtInt(used), value: used },
      { text: fmtPct(100 * ratio), value: 100 * ratio }])));
  document.body.dataset.rendered = "1";
}

function main() {
  const doc = readData();
  const meta = document.getElementById("meta");
  if (!doc.buckets.length) {
    meta.textContent = `Built ${doc.generated_at}: the store has no usage${doc.api_filter ? " for " + doc.api_filter : ""} in this range.`;
    for (const id of ["traffic", "applications", "tiers", "latency", "errors", "quota"]) panel(id, empty());
    document.body.dataset.rendered = "1";
    return;
  }
  meta.textContent = `${doc.from} to ${doc.to} (UTC) by ${doc.granularity} · built ${doc.generated_at}` +
    (doc.api_filter ? ` · API ${doc.api_filter} only` : "");
  const state = readHash(doc);
  setupFilters(doc, state, () => render(doc, state));
  render(doc, state);
  if (doc.refresh_s > 0) setTimeout(() => location.reload(), doc.refresh_s * 1000);
}

try {
  main();
} catch (e) {
  reportError(e && e.stack ? e.stack : e);
}
