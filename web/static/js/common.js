/* Skald: helpers shared by every page (loaded after socket.io.min.js and live.js).
 *
 * Exposes window.Skald = {csrfToken, apiFetch, errorMessage, live, onConnState,
 * onMaintenanceStatus, maintenance, plainState, formatEta, formatPercent,
 * clampPercent, formatCount, formatTime, formatBytes, show, hide}.
 * No request leaves the page's own origin.
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

  /** 1536 -> "1.5 KB"; bytes in 1024s, one decimal from KB up. */
  function formatBytes(n) {
    var v = Number(n) || 0;
    if (v < 1024) return v + " B";
    var units = ["KB", "MB", "GB"];
    var i = -1;
    do { v /= 1024; i += 1; } while (v >= 1024 && i < units.length - 1);
    return (v >= 10 ? Math.round(v) : Math.round(v * 10) / 10) + " " + units[i];
  }

  /** A state in plain words (the raw state stays in the API and in data-state). */
  function plainState(state, failed) {
    switch (state) {
      case "PENDING": case "RECEIVED": return "Queued";
      case "STARTED": case "PROGRESS": return "Working";
      case "CANCELLING": return "Cancelling";
      case "SUCCESS":
        var n = Number(failed) || 0;
        if (!n) return "Done";
        return "Done, " + n + (n === 1 ? " image" : " images") + " could not be read";
      case "REVOKED": return "Cancelled";
      case "FAILURE": return "Failed";
      default: return state ? String(state) : "Queued";
    }
  }

  // ---- maintenance banner ----------------------------------------------

  var maintenanceTimer = null;
  var maintenance = { active: false, message: "", until: null };

  /** Server event maintenance_status {active, message, until}; pages listen for
   * the "skald:maintenance" event on document (detail: the status). */
  function onMaintenanceStatus(status) {
    clearTimeout(maintenanceTimer);
    maintenance = status && status.active ? status : { active: false, message: "", until: null };
    // Nothing is sent when a timed maintenance runs out: end it ourselves then.
    if (maintenance.active && typeof maintenance.until === "number") {
      var left = maintenance.until * 1000 - Date.now();
      if (left <= 0) maintenance = { active: false, message: "", until: null };
      else maintenanceTimer = setTimeout(function () { onMaintenanceStatus(null); }, Math.min(left, 2147483000));
    }
    renderBanner();
    document.dispatchEvent(new CustomEvent("skald:maintenance", { detail: maintenance }));
  }

  function renderBanner() {
    var banner = document.getElementById("maintenance-banner");
    if (!banner) return;
    if (!maintenance.active) { hide(banner); return; }
    var msg = document.getElementById("maintenance-message");
    var until = document.getElementById("maintenance-until");
    var text = maintenance.message || "Skald is in maintenance: new jobs cannot be started; running jobs finish.";
    if (msg) msg.textContent = text; else banner.textContent = text;
    if (until) {
      var when = formatTime(maintenance.until);
      until.textContent = when ? "(until " + when + ")" : "";
    }
    show(banner);
  }

  /** The status the page was rendered with (data-* on the banner). */
  function initialMaintenance() {
    var banner = document.getElementById("maintenance-banner");
    if (!banner || banner.getAttribute("data-active") !== "1") return;
    var until = Number(banner.getAttribute("data-until"));
    onMaintenanceStatus({ active: true, message: banner.getAttribute("data-message") || "",
                          until: until > 0 ? until : null });
  }

  // ---- the live connection -------------------------------------------------

  var live = null;
  var connListeners = [];

  /** The page's one SkaldLive connection (live.js), created on first call; same
   * origin, the session cookie authenticates it. */
  function getLive() {
    if (live) return live;
    if (!window.SkaldLive) throw new Error("live.js is not loaded");
    live = window.SkaldLive.connect({
      onState: function (kind, refusal) {
        connListeners.forEach(function (fn) { fn(kind, refusal); });
      }
    });
    live.on("maintenance_status", onMaintenanceStatus);
    return live;
  }

  /** fn(kind, refusal) on every connection change: live, reconnecting, disconnected. */
  function onConnState(fn) { connListeners.push(fn); }

  window.Skald = {
    csrfToken: csrfToken,
    apiFetch: apiFetch,
    errorMessage: errorMessage,
    live: getLive,
    onConnState: onConnState,
    onMaintenanceStatus: onMaintenanceStatus,
    maintenance: function () { return maintenance; },
    plainState: plainState,
    formatBytes: formatBytes,
    formatEta: formatEta,
    formatPercent: formatPercent,
    clampPercent: clampPercent,
    formatCount: formatCount,
    formatTime: formatTime,
    show: show,
    hide: hide
  };

  initialMaintenance();
  // Signed-in pages open the socket right away so the maintenance banner
  // follows the operator everywhere; page scripts share it via Skald.live().
  // (An anonymous connection would only be refused with "unauthorized".)
  if (document.body && document.body.getAttribute("data-authenticated") === "1") {
    try { getLive(); } catch (e) { /* no socket: pages still work over HTTP */ }
  }
})();
