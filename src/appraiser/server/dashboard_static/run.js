// One run: the loss chart (raw, EMA, noise band; probe MAE on a second y axis), kept live over SSE.
// Points are keyed by step: a point the stream repeats (after a reconnect) is dropped, never drawn twice.
"use strict";
dash.header();

const runId = decodeURIComponent(location.pathname.split("/").pop());
const chart = document.getElementById("loss");
const T = { high: 0, low: 1, raw: 2, ema: 3, probe: 4 };
const last = { loss: -Infinity, probe_mae: -Infinity };
let source = null;
let seenEvents = 0;
// When each live loss point reached the page ([step, ms since epoch]): benchmarks/dashboard.py reads it.
window.dashArrivals = [];

function traces(c) {
  const loss = c.loss, probe = c.probe_mae;
  return [
    { x: loss.step, y: loss.high, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, name: "band" },
    { x: loss.step, y: loss.low, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(31,119,180,0.18)",
      hoverinfo: "skip", name: "noise band (±1 sd)" },
    { x: loss.step, y: loss.raw, mode: "lines", line: { color: "rgba(31,119,180,0.35)", width: 1 }, name: "loss (raw)" },
    { x: loss.step, y: loss.ema, mode: "lines", line: { color: "#1f77b4", width: 2.5 }, name: "loss (EMA)" },
    { x: probe.step, y: probe.raw, mode: "lines+markers", yaxis: "y2", line: { color: "#ff7f0e" },
      name: "probe MAE ($)" },
  ];
}

function layout(d) {
  return {
    margin: { t: 30, r: 70, l: 60, b: 45 },
    legend: { orientation: "h", y: 1.08 },
    xaxis: { title: { text: "step" } },
    yaxis: { title: { text: "training loss" } },
    yaxis2: { title: { text: "probe MAE ($)" }, overlaying: "y", side: "right", showgrid: false },
    uirevision: "keep", // zoom survives live updates
  };
}

function drawFacts(run) {
  document.getElementById("title").textContent = "Run " + run.id + (run.name ? " · " + run.name : "");
  const st = document.getElementById("status");
  st.textContent = run.status;
  st.className = "status s-" + run.status;
  document.getElementById("progress").textContent = dash.progress(run);
  document.getElementById("best").textContent = run.best
    ? "best " + run.best.metric + " " + dash.num(run.best.value) + " at step " + run.best.step : "";
  const v = run.trend.loss;
  const vEl = document.getElementById("verdict");
  vEl.textContent = v ? "Loss trend — " + v.message : "Loss trend — no points yet";
  vEl.className = v ? "v-" + v.state.replace(" ", "-") : "muted";
  const p = run.trend.probe_mae;
  document.getElementById("probe-verdict").textContent = p ? "Probe MAE trend — " + p.message : "";
}

function drawLatest(latest) {
  const body = document.querySelector("#latest tbody");
  body.replaceChildren();
  for (const k of Object.keys(latest || {}).sort()) body.appendChild(dash.row([k, { text: dash.num(latest[k]), cls: "num" }]));
}

function drawCheckpoints(cks) {
  const ul = document.getElementById("checkpoints");
  ul.replaceChildren();
  if (!cks.length) ul.appendChild(dash.el("li", "none yet", "muted"));
  for (const c of cks) ul.appendChild(dash.el("li", c.name + " (step " + c.step + ")"));
}

function addEvents(events) {
  const log = document.getElementById("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  for (const e of events) {
    if (e.id <= seenEvents) continue;
    seenEvents = e.id;
    const line = dash.el("div", new Date(e.time * 1000).toLocaleTimeString() + "  " + e.message, "lvl-" + e.level);
    line.dataset.id = e.id;
    log.appendChild(line);
  }
  while (log.childElementCount > 1000) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function addPoints(points) {
  const loss = { x: [[], [], [], []], y: [[], [], [], []] };
  const probe = { x: [[]], y: [[]] };
  for (const p of points) {
    if (p.step <= last[p.name]) continue;
    last[p.name] = p.step;
    if (p.name === "loss") {
      if (window.dashArrivals.length < 100000) window.dashArrivals.push([p.step, Date.now()]);
      [p.high, p.low, p.value, p.ema].forEach((v, i) => { loss.x[i].push(p.step); loss.y[i].push(v); });
    } else {
      probe.x[0].push(p.step); probe.y[0].push(p.value);
    }
  }
  if (loss.x[0].length) Plotly.extendTraces(chart, loss, [T.high, T.low, T.raw, T.ema]);
  if (probe.x[0].length) Plotly.extendTraces(chart, probe, [T.probe]);
}

function connect(cursor) {
  // The browser's EventSource reconnects by itself and sends Last-Event-ID; `after` is only the first cursor.
  source = new EventSource("/dashboard/api/runs/" + encodeURIComponent(runId) + "/stream?after=" + encodeURIComponent(cursor));
  const live = document.getElementById("live");
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.addEventListener("metrics", (e) => addPoints(JSON.parse(e.data).points));
  source.addEventListener("log", (e) => addEvents(JSON.parse(e.data).events));
  source.addEventListener("run", (e) => {
    const s = JSON.parse(e.data);
    drawFacts(s);
    drawLatest(s.latest);
    drawCheckpoints(s.checkpoints);
  });
  source.addEventListener("reset", () => { source.close(); load(); });
  source.addEventListener("end", (e) => {
    source.close();
    live.textContent = JSON.parse(e.data || "{}").deleted ? "run deleted" : "run ended";
  });
}

function load() {
  // ?full=1 draws every step (no downsampling), ?points=N downsamples to N: for comparing, as the benchmark does.
  const q = new URLSearchParams(location.search);
  const opts = q.has("full") ? "?full=1" : q.has("points") ? "?points=" + encodeURIComponent(q.get("points")) : "";
  return dash.api("runs/" + encodeURIComponent(runId) + opts).then((d) => {
    last.loss = d.curves.loss.step.length ? d.curves.loss.step[d.curves.loss.step.length - 1] : -Infinity;
    last.probe_mae = d.curves.probe_mae.step.length ? d.curves.probe_mae.step[d.curves.probe_mae.step.length - 1] : -Infinity;
    const drawn = Plotly.react(chart, traces(d.curves), layout(d), { responsive: true, displaylogo: false });
    drawFacts(d.run);
    drawLatest(d.latest);
    drawCheckpoints(d.checkpoints);
    addEvents(d.events);
    if (d.curves.loss.downsampled) {
      document.getElementById("live").textContent = "showing " + d.curves.loss.step.length + " of " + d.curves.loss.n + " steps";
    }
    connect(d.cursor);
    return drawn;
  }).then(() => {
    window.dashReadyAt = performance.now(); // ms from navigation to the chart drawn (benchmarks/dashboard.py)
    window.dashReady = true;
  }).catch((e) => { document.getElementById("title").textContent = "cannot load run: " + e.message; });
}
load();
