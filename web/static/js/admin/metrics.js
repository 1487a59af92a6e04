/* Skald operator view: the metric tiles and the two charts (vendored uPlot), each chart
 * with a text alternative: a summary line (role=img names the canvas) and a table of
 * the latest points for keyboard and screen-reader users. */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util;
  var SPAN = 15 * 60;     // s of history the charts show
  var TABLE_ROWS = 10;    // latest points in each chart's table
  var updated = U.$("metrics-updated");
  var series = { t: [], eps: [], tpm: [], active: [], queued: [], failed: [] };

  // ---- tiles --------------------------------------------------------------------------

  function metricText(name, value) {
    if (value === null || value === undefined) return "–";
    if (name === "system_load") return U.loads(value) || "–";
    if (name === "bridge_lag") return U.seconds(value) || "0 s";
    return String(value);
  }

  function render(m) {
    if (!m || typeof m !== "object") return;
    document.querySelectorAll("[data-metric]").forEach(function (dd) {
      var name = dd.getAttribute("data-metric");
      if (name in m) dd.textContent = metricText(name, m[name]);
    });
    updated.textContent = U.clockTime(m.updated_at) || new Date().toLocaleTimeString();
  }

  // ---- charts -------------------------------------------------------------------------

  var CHARTS = [
    { node: U.$("chart-throughput"), table: U.$("table-throughput"), summary: U.$("summary-throughput"),
      lines: [["events/s", "#0b5cad", "eps"], ["tasks/min", "#1a7f37", "tpm"]] },
    { node: U.$("chart-states"), table: U.$("table-states"), summary: U.$("summary-states"),
      lines: [["active", "#0b5cad", "active"], ["queued", "#9a6700", "queued"], ["failed/min", "#b42318", "failed"]] }
  ];

  function width(node) { return Math.max(280, (node.clientWidth || 600) - 4); }

  CHARTS.forEach(function (c) {
    if (typeof window.uPlot !== "function" || !c.node) return;
    var opts = {
      width: width(c.node), height: 200, scales: { x: { time: true } },
      series: [{}].concat(c.lines.map(function (l) {
        return { label: l[0], stroke: l[1], width: 2, value: function (u, v) { return v === null ? "–" : String(v); } };
      })),
      axes: [{ stroke: "#888" }, { stroke: "#888" }],
      legend: { live: true }
    };
    c.plot = new window.uPlot(opts, [[]].concat(c.lines.map(function () { return []; })), c.node);
  });

  function describe(c) {
    var n = series.t.length;
    if (!n) { c.summary.textContent = "No data yet."; return; }
    var parts = c.lines.map(function (l) {
      var values = series[l[2]].filter(function (v) { return v !== null; });
      var now = series[l[2]][n - 1];
      var peak = values.length ? Math.max.apply(null, values) : null;
      return l[0] + " " + (now === null ? "–" : now) + " now, peak " + (peak === null ? "–" : peak);
    });
    c.summary.textContent = parts.join("; ") + " (last " + Math.round((series.t[n - 1] - series.t[0]) / 60) + " min).";
  }

  function tabulate(c) {
    var body = c.table.tBodies[0];
    var from = Math.max(0, series.t.length - TABLE_ROWS);
    var rows = [];
    for (var i = series.t.length - 1; i >= from; i--) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = U.clockTime(series.t[i]);
      tr.appendChild(th);
      c.lines.forEach(function (l) { tr.appendChild(U.cell(series[l[2]][i] === null ? "–" : series[l[2]][i])); });
      rows.push(tr);
    }
    body.replaceChildren.apply(body, rows);
  }

  function redraw() {
    CHARTS.forEach(function (c) {
      if (c.plot) c.plot.setData([series.t].concat(c.lines.map(function (l) { return series[l[2]]; })));
      if (c.summary) describe(c);
      if (c.table) tabulate(c);
    });
  }

  function addPoint(t, eps, tpm, active, queued, failed) {
    t = U.num(t);
    if (t === null) return;
    var lastT = series.t.length ? series.t[series.t.length - 1] : null;
    if (lastT !== null && t <= lastT) return;  // x must grow
    series.t.push(t); series.eps.push(U.num(eps)); series.tpm.push(U.num(tpm));
    series.active.push(U.num(active)); series.queued.push(U.num(queued)); series.failed.push(U.num(failed));
    while (series.t.length && series.t[0] < t - SPAN) {
      Object.keys(series).forEach(function (k) { series[k].shift(); });
    }
  }

  window.addEventListener("resize", function () {
    CHARTS.forEach(function (c) { if (c.plot) c.plot.setSize({ width: width(c.node), height: 200 }); });
  });

  /** A system_metrics_update's metrics: tiles and one chart point. */
  function tick(m) {
    render(m);
    addPoint(m.updated_at || Date.now() / 1000, m.events_per_second, m.tasks_per_minute,
             m.active_jobs, m.queued, m.failed_per_minute);
    redraw();
  }

  function history(points) {
    if (!Array.isArray(points)) return;
    points.forEach(function (p) { if (Array.isArray(p)) addPoint(p[0], p[1], p[2], p[3], p[4], p[5]); });
    redraw();
  }

  A.panels.metrics = { render: render, tick: tick, history: history };
})();
