// One evaluation: guess vs truth (colour bands, y = x) and the running MAE with its 95% CI.
"use strict";
dash.header();

const evalId = decodeURIComponent(location.pathname.split("/").pop());
dash.api("evals/" + encodeURIComponent(evalId)).then((d) => {
  document.getElementById("title").textContent = d.label;
  const m = d.metrics;
  document.getElementById("facts").textContent = "MAE " + dash.money(m.mae) +
    (m.mae_ci_low !== undefined ? " (95% CI " + dash.money(m.mae_ci_low) + " – " + dash.money(m.mae_ci_high) + ")" : "") +
    " on " + d.n + " items · test set " + d.fingerprint;
  const s = d.scatter;
  const hi = Math.max(1, ...s.truth, ...s.guess) * 1.1;
  const lo = Math.max(0.5, Math.min(...s.truth, ...s.guess.map((g) => Math.max(g, 0.5))) * 0.9);
  Plotly.newPlot("scatter", [
    { x: s.truth, y: s.guess.map((g) => Math.max(g, lo)), text: s.title.map(dash.plotlyText), mode: "markers", name: "items",
      marker: { color: s.colour, size: 7, opacity: 0.8 },
      hovertemplate: "%{text}<br>truth $%{x:,.2f}<br>guess $%{y:,.2f}<extra></extra>" },
    { x: [lo, hi], y: [lo, hi], mode: "lines", name: "y = x", line: { dash: "dash", color: "#333" } },
  ], { xaxis: { type: "log", title: { text: "true price ($)" } }, yaxis: { type: "log", title: { text: "guess ($)" } },
       margin: { t: 30 } }, { displaylogo: false, responsive: true });
  const r = d.running;
  Plotly.newPlot("running", [
    { x: r.n, y: r.high, mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
    { x: r.n, y: r.low, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(31,119,180,0.2)",
      name: "95% CI" },
    { x: r.n, y: r.mae, mode: "lines", name: "running MAE", line: { color: "#1f77b4", width: 2 } },
  ], { xaxis: { title: { text: "items scored" } }, yaxis: { title: { text: "mean absolute error ($)" } },
       margin: { t: 30 } }, { displaylogo: false, responsive: true });
}).catch((e) => { document.getElementById("title").textContent = "cannot load evaluation: " + e.message; });
