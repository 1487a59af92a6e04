/* Skald: helpers shared by every page (loaded after socket.io.min.js).
 *
 * Exposes window.Skald = {csrfToken, apiFetch, skaldSocket, formatEta,
 * formatPercent, formatCount, formatTime, show, hide}; skaldSocket is also a
 * global function. No request leaves the page's own origin.
 */
(function () {
  "use strict";

  /** The CSRF token rendered into <meta name="csrf-token"> by base.html. */
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  /**
   * fetch() against our own API: same-origin cookies, CSRF header, JSON.
   * Resolves to {ok, status, data}; data is the parsed JSON body or null.
   * Network failures resolve too (status 0) so callers have one code path.
   */
  function apiFetch(url, options) {
    var opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = Object.assign(
      { "Accept": "application/json", "X-CSRFToken": csrfToken() },
      opts.headers || {}
    );
    return fetch(url, opts).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return { ok: resp.ok, status: resp.status, data: data };
      });
    }, function (err) {
      return { ok: false, status: 0, data: null, networkError: err };
    });
  }

  /** Human message out of an API answer ({"error": {"code", "message"}}). */
  function errorMessage(result, fallback) {
    var err = result && result.data && result.data.error;
    if (err && err.message) return err.message;
    if (result && result.status === 0) return "Cannot reach the server.";
    if (result && result.status === 413) return "Upload too large.";
    return fallback || ("Request failed" + (result && result.status ? " (HTTP " + result.status + ")" : "") + ".");
  }

  // ---- formatting -------------------------------------------------------

  /** Seconds left -> "about 12 s left" / "about 3 min left"; "" for null. */
  function formatEta(seconds) {
    if (seconds === null || seconds === undefined || seconds === "") return "";
    var s = Number(seconds);
    if (!isFinite(s) || s < 0) return "";
    s = Math.max(1, Math.round(s));
    if (s < 60) return "about " + s + " s left";
    var min = Math.round(s / 60);
    if (min < 60) return "about " + min + " min left";
    var h = Math.floor(min / 60);
    var rest = min % 60;
    return "about " + h + " h" + (rest ? " " + rest + " min" : "") + " left";
  }

  /** 0..100 (any number) -> integer percent clamped to 0..100. */
  function clampPercent(value) {
    var p = Number(value);
    if (!isFinite(p)) return 0;
    return Math.min(100, Math.max(0, Math.round(p)));
  }

  function formatPercent(value) { return clampPercent(value) + "%"; }

  function formatCount(current, total) {
    return (Number(current) || 0) + " / " + (Number(total) || 0);
  }

  /** Unix seconds, or an ISO string, -> local date/time text; "" if unusable. */
  function formatTime(value) {
    if (value === null || value === undefined || value === "") return "";
    var d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (isNaN(d.getTime())) return "";
    return d.toLocaleString();
  }

  function show(el) { if (el) el.hidden = false; }
  function hide(el) { if (el) el.hidden = true; }

  // ---- maintenance banner ----------------------------------------------

  var maintenanceTimer = null;

  /** Server event maintenance_status {active, message, until}. */
  function onMaintenanceStatus(status) {
    var banner = document.getElementById("maintenance-banner");
    if (!banner) return;
    clearTimeout(maintenanceTimer);
    if (!status || !status.active) { hide(banner); return; }
    // Nothing is sent when a timed maintenance runs out: hide it ourselves then.
    if (typeof status.until === "number") {
      var left = status.until * 1000 - Date.now();
      if (left <= 0) { hide(banner); return; }
      maintenanceTimer = setTimeout(function () { hide(banner); }, Math.min(left, 2147483000));
    }
    var msg = document.getElementById("maintenance-message");
    var until = document.getElementById("maintenance-until");
    var text = status.message || "Skald is in maintenance: new jobs cannot be started; running jobs finish.";
    if (msg) msg.textContent = text; else banner.textContent = text;
    if (until) {
      var when = formatTime(status.until);
      until.textContent = when ? "(until " + when + ")" : "";
    }
    show(banner);
  }

  // ---- socket ------------------------------------------------------------

  var socket = null;

  /**
   * The page's one Socket.IO connection (created on first call). Same origin,
   * websocket transport only; the Flask session cookie authenticates it.
   */
  function skaldSocket() {
    if (socket) return socket;
    if (typeof window.io !== "function") {
      throw new Error("socket.io client not loaded");
    }
    socket = window.io({ transports: ["websocket"] });
    socket.on("maintenance_status", onMaintenanceStatus);
    return socket;
  }

  window.Skald = {
    csrfToken: csrfToken,
    apiFetch: apiFetch,
    errorMessage: errorMessage,
    skaldSocket: skaldSocket,
    onMaintenanceStatus: onMaintenanceStatus,
    formatEta: formatEta,
    formatPercent: formatPercent,
    clampPercent: clampPercent,
    formatCount: formatCount,
    formatTime: formatTime,
    show: show,
    hide: hide
  };
  window.skaldSocket = skaldSocket;

  // Signed-in pages open the socket right away so the maintenance banner
  // works everywhere; page scripts reuse the same socket via skaldSocket().
  // (An anonymous connection would only be refused with "unauthorized".)
  if (document.body && document.body.getAttribute("data-authenticated") === "1") {
    try { skaldSocket(); } catch (e) { /* no socket: pages still work over HTTP */ }
  }
})();
