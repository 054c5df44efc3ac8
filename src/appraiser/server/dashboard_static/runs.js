// The runs list: every run, refreshed every few seconds (no SSE needed: rows change slowly).
"use strict";
dash.header();

function draw(runs) {
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  for (const r of runs) {
    const best = r.best ? r.best.metric + " " + dash.num(r.best.value) + " @ " + r.best.step : "–";
    const tr = dash.row([
      dash.link("/dashboard/runs/" + encodeURIComponent(r.id), r.id),
      r.name || "",
      r.kind + (r.external_id ? " (" + r.external_id + ")" : ""),
      dash.statusCell(r.status),
      dash.progress(r),
      dash.trendCell(r.trend),
      best,
      r.model || "",
      dash.when(r.created),
    ]);
    tr.dataset.run = r.id;
    body.appendChild(tr);
  }
  document.getElementById("summary").textContent =
    runs.length + " runs · " + runs.filter((r) => r.status === "running").length + " running";
}

function refresh() {
  dash.api("runs").then((d) => draw(d.runs)).catch((e) => {
    document.getElementById("summary").textContent = "cannot load runs: " + e.message;
  });
}
refresh();
setInterval(refresh, 5000);
