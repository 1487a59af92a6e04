/* Skald operator view: first data over HTTP (GET /api/cluster, /api/workers, /api/tasks),
 * then everything by push in room "admin" through live.js (joined again after every
 * reconnect, which also reloads what a disconnect may have missed):
 *   system_metrics_update  tiles, workers table, a chart point (about 1/s)
 *   job_update             upsert the task's row (never back from an ending)
 *   admin_alert            prepend to the alert list
 *   maintenance_status     the maintenance panel (common.js shows the banner)
 */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util, S = window.Skald, P = A.panels;
  var conn = U.$("conn");
  var WORDS = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", disconnected: "disconnected" };

  function setConn(kind, text) {
    conn.textContent = text || WORDS[kind] || kind;
    conn.setAttribute("data-conn", kind);
  }

  function loadCluster() {
    return S.apiFetch("/api/cluster").then(function (result) {
      if (!result.ok || !result.data) { U.showMessage("Could not load cluster state: " + S.errorMessage(result)); return; }
      var d = result.data;
      P.metrics.render(d.metrics);
      P.maintenance.render(d.maintenance);
      P.metrics.history(d.history);
      if (Array.isArray(d.alerts) && !P.alerts.count()) d.alerts.forEach(P.alerts.add);
    });
  }

  var live = null;
  try { live = S.live(); } catch (e) { U.showMessage("Live updates are unavailable: " + e.message); }

  if (live) {
    S.onConnState(function (kind, refusal) {
      if (kind === "live") return;  // "live" once the admin room answers
      setConn(kind);
      if (kind === "disconnected" && refusal === "unauthorized") U.showMessage("Not logged in: reload the page to log in again.");
    });
    live.joinAdmin({
      onJoined: function (ack, again) {
        setConn("live");
        U.clearMessage();
        P.metrics.render(ack.metrics);
        if (again) { P.tasks.load(); P.workers.load(); }  // fill what a disconnect may have missed
      },
      onError: function (err) {
        setConn("disconnected", err.code === "timeout" ? "no answer" : "refused");
        U.showMessage(err.message || err.code || "Not allowed to watch the cluster.");
      }
    });
    live.on("system_metrics_update", function (data) {
      if (!data || typeof data !== "object") return;
      P.metrics.tick(data.metrics || {});
      if (Array.isArray(data.workers)) P.workers.render(data.workers);
    });
    live.on("job_update", function (data) { if (data && data.job) P.tasks.upsert(data.job, true); });
    live.on("admin_alert", P.alerts.add);
    live.on("maintenance_status", P.maintenance.render);
  }

  loadCluster();
  P.workers.load();
  P.tasks.load();
})();
