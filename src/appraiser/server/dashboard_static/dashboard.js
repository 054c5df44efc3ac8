// Shared helpers of the dashboard pages. Data is written with textContent, never as HTML.
"use strict";

const dash = {
  api(path) {
    return fetch("/dashboard/api/" + path, { credentials: "same-origin" }).then((r) => {
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  },
  el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  },
  link(href, text) {
    const a = dash.el("a", text);
    a.href = href;
    return a;
  },
  row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c);
      else if (c && typeof c === "object") { td.textContent = c.text ?? ""; if (c.cls) td.className = c.cls; }
      else td.textContent = c ?? "";
      tr.appendChild(td);
    }
    return tr;
  },
  when(t) {
    if (!t) return "";
    return new Date(t * 1000).toLocaleString();
  },
  money(v) {
    if (v === null || v === undefined) return "–";
    const text = "$" + Math.abs(v).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return v < 0 ? "−" + text : text;
  },
  plotlyText(t) {
    // plotly reads a subset of HTML in labels and hover text (<a href> becomes a link): show it as written
    return String(t ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  },
  num(v, digits) {
    return v === null || v === undefined ? "–" : Number(v).toPrecision(digits || 4);
  },
  statusCell(status) {
    return { text: status, cls: "status s-" + status };
  },
  trendCell(trend) {
    const v = trend && trend.loss;
    return v ? { text: v.message, cls: "v-" + v.state.replace(" ", "-") } : { text: "–", cls: "muted" };
  },
  progress(run) {
    return "step " + run.step + "/" + (run.max_steps ?? "?");
  },
  header() {
    const h = document.createElement("header");
    h.appendChild(dash.el("b", "Appraiser"));
    h.appendChild(dash.link("/dashboard", "Runs"));
    h.appendChild(dash.link("/dashboard/leaderboard", "Leaderboard"));
    document.body.prepend(h);
  },
};
