/* Skald operator view: the workers table (replaced on every system_metrics_update); each
 * hostname links to the worker's own page (/admin/workers/<hostname>). */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util;
  var body = U.$("workers"), empty = U.$("workers-empty");

  function render(list) {
    if (!Array.isArray(list)) return;
    var rows = list.filter(function (w) { return w && typeof w.hostname === "string"; }).map(function (w) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-testid", "worker-row-" + w.hostname);
      tr.setAttribute("data-online", w.online ? "1" : "0");
      var host = document.createElement("th");
      host.scope = "row";
      host.setAttribute("data-testid", "worker-host");
      var link = document.createElement("a");
      link.href = "/admin/workers/" + encodeURIComponent(w.hostname);
      link.textContent = w.hostname;
      link.setAttribute("data-testid", "worker-link");
      host.append(link);
      var status = U.cell(w.online ? "online" : "offline", "worker-status");
      status.className = w.online ? "ok" : "bad";
      tr.append(host, status, U.cell(w.active), U.cell(w.processed), U.cell(U.loads(w.loadavg)),
                U.cell(U.clockTime(w.last_heartbeat)));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    empty.hidden = rows.length > 0;
  }

  function load() {
    return window.Skald.apiFetch("/api/workers").then(function (result) {
      if (result.ok && result.data) render(result.data.workers);
    });
  }

  A.panels.workers = { render: render, load: load };
})();
