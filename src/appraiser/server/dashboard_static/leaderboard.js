// The leaderboard: MAE with its 95% CI per pricer on one test set, and a paired comparison of two.
"use strict";
dash.header();

function drawChart(rows) {
  const y = rows.map((r) => dash.plotlyText(r.label));
  document.getElementById("chart").style.height = 140 + 34 * rows.length + "px";
  Plotly.react("chart", [{
    type: "bar", orientation: "h", x: rows.map((r) => r.mae), y,
    error_x: { type: "data", symmetric: false, array: rows.map((r) => r.mae_ci_high - r.mae),
               arrayminus: rows.map((r) => r.mae - r.mae_ci_low) },
    text: rows.map((r) => dash.money(r.mae)), textposition: "outside", marker: { color: "#1f77b4" },
    hovertemplate: "%{y}<br>MAE %{x:$,.2f}<extra></extra>",
  }], {
    margin: { l: 260, r: 40, t: 30, b: 45 }, height: 140 + 34 * rows.length,
    xaxis: { title: { text: "MAE ($), bars: 95% CI — lower is better" } }, yaxis: { autorange: "reversed", type: "category" },
  }, { displaylogo: false, responsive: true });
}

function drawTable(rows) {
  const body = document.querySelector("#board tbody");
  body.replaceChildren();
  rows.forEach((r, i) => {
    const ci = r.mae_ci_low === null ? "–" : dash.money(r.mae_ci_low) + " – " + dash.money(r.mae_ci_high);
    const tr = dash.row([
      i + 1, dash.link("/dashboard/evals/" + r.id, r.label),
      { text: dash.money(r.mae), cls: "num" }, { text: ci, cls: "num ci" },
      { text: dash.num(r.rmsle, 3), cls: "num" },
      { text: r.hit_rate === null ? "–" : Math.round(r.hit_rate * 100) + "%", cls: "num" },
      { text: r.failures + (r.ranked_after ? "*" : ""), cls: "num" }, { text: r.n, cls: "num" }, r.created,
    ]);
    tr.dataset.eval = r.id;
    body.appendChild(tr);
  });
  // as `appraiser leaderboard` says it: a row that priced few items ranks after the rest, whatever its MAE
  document.getElementById("ranked-after").hidden = !rows.some((r) => r.ranked_after);
}

function fillPickers(rows) {
  for (const [id, pick] of [["a", 0], ["b", 1]]) {
    const sel = document.getElementById(id);
    sel.replaceChildren();
    rows.forEach((r) => { const o = dash.el("option", r.label); o.value = r.id; sel.appendChild(o); });
    if (rows.length > pick) sel.selectedIndex = pick;
  }
}

function compare() {
  const a = document.getElementById("a").value, b = document.getElementById("b").value;
  const out = document.getElementById("comparison");
  if (!a || !b) return;
  dash.api("compare?a=" + a + "&b=" + b).then((c) => {
    out.replaceChildren(
      dash.el("p", c.verdict, "status"),
      dash.el("p", "On " + c.n + " shared items: MAE " + dash.money(c.mae_a) + " (" + c.a + ") vs " + dash.money(c.mae_b) +
        " (" + c.b + "); mean difference of absolute errors (A − B) " + dash.money(c.mean_diff) +
        ", 95% CI " + dash.money(c.ci_low) + " to " + dash.money(c.ci_high) + "."),
      dash.el("p", c.a + " closer on " + c.a_better + " items, " + c.b + " on " + c.b_better + ", " + c.ties +
        " ties; sign test p = " + dash.num(c.p_value, 3) + (c.skipped ? "; " + c.skipped + " items skipped (a pricer failed)" : ""), "muted"),
    );
  }).catch((e) => out.replaceChildren(dash.el("p", "cannot compare: " + e.message)));
}

function load(fp) {
  dash.api("leaderboard" + (fp ? "?fingerprint=" + encodeURIComponent(fp) : "")).then((d) => {
    const sel = document.getElementById("fingerprint");
    sel.replaceChildren();
    for (const s of d.fingerprints) {
      const o = dash.el("option", s.fingerprint + " (" + s.size + " items, " + s.evaluations + " evaluations)");
      o.value = s.fingerprint;
      o.selected = s.fingerprint === d.fingerprint;
      sel.appendChild(o);
    }
    document.getElementById("summary").textContent = d.rows.length ? d.rows.length + " pricers" : "no evaluations yet";
    drawTable(d.rows);
    if (d.rows.length) drawChart(d.rows);
    fillPickers(d.rows);
    if (d.rows.length > 1) compare();
  });
}
document.getElementById("fingerprint").addEventListener("change", (e) => load(e.target.value));
document.getElementById("go").addEventListener("click", compare);
load(new URLSearchParams(location.search).get("fingerprint"));
