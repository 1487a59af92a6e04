/* Skald: the live job page (/jobs/<task_id>).
 *
 * Sources, in the order they usually arrive: the snapshot rendered into the page,
 * GET .../captions (every image, made or not), the join_task ack (again after every
 * reconnect) and the room's events, through live.js (which keeps "exactly one
 * ending, no progress after it"). The caption list is review.js's.
 *
 * Screen readers hear one polite status line (#live-status): progress at most every
 * 10% or 10 s ("34 of 160 captioned, about 9 s left"), the ending once, and the
 * answers to what the user does. Focus moves only when the user's place goes away
 * or after the ending, and then only from Cancel or from nowhere.
 */
(function () {
  "use strict";
  var S = window.Skald;

  function $(id) { return document.getElementById(id); }
  var root = $("job");
  var taskId = root.getAttribute("data-task-id");
  var el = {
    bar: $("bar"), percent: $("percent"), state: $("state"), step: $("step"), eta: $("eta"),
    count: $("count"), cancel: $("cancel"), ending: $("ending"), conn: $("conn"),
    message: $("message"), waiting: $("waiting"), status: $("live-status"), created: $("created")
  };
  var TERMINAL = { SUCCESS: true, FAILURE: true, REVOKED: true };
  var PACE_MS = 10000;
  var WAIT_POLL_MS = 5000;

  var last = null;            // last snapshot shown
  var ended = false;
  var cancelRequested = false;
  var failed = 0;

  // ---- the status line --------------------------------------------------------------

  var spoken = { at: 0, bucket: -1, current: -1, timer: null };

  function say(text) {
    // The same words twice are not announced again: nudge them.
    el.status.textContent = el.status.textContent === text ? text + "\u00a0" : text;
  }

  function progressWords(snap) {
    var total = Number(snap.total) || 0;
    var text = (Number(snap.current) || 0) + " of " + total + " captioned";
    var eta = S.formatEta(snap.estimated_completion);
    return eta ? text + ", " + eta : text;
  }

  /** Progress is spoken when it crosses another 10%, or 10 s after the last time. */
  function paceProgress(snap) {
    var pct = S.clampPercent(snap.progress_percent);
    var bucket = Math.floor(pct / 10);
    var now = Date.now();
    clearTimeout(spoken.timer);
    if (Number(snap.current) === spoken.current) return;
    if (bucket > spoken.bucket || now - spoken.at >= PACE_MS) {
      spoken.at = now;
      spoken.bucket = bucket;
      spoken.current = Number(snap.current);
      say(progressWords(snap));
    } else {
      spoken.timer = setTimeout(function () { if (!ended && last) paceProgress(last); }, PACE_MS - (now - spoken.at));
    }
  }

  // ---- rendering ----------------------------------------------------------------------

  function showMessage(text) { el.message.textContent = text; S.show(el.message); }
  function clearMessage() { el.message.textContent = ""; S.hide(el.message); }

  function setState(state) {
    el.state.textContent = S.plainState(state, failed);
    el.state.setAttribute("data-state", state);
    if (state === "SUCCESS" && failed) el.state.setAttribute("data-partial", "1");
    else el.state.removeAttribute("data-partial");
  }

  function setCancelable(on) {
    if (on) el.cancel.removeAttribute("aria-disabled");
    else el.cancel.setAttribute("aria-disabled", "true");  // focus stays on it
  }

  function waitingWords(snap) {
    if (snap.state !== "PENDING") return "";
    if (snap.waiting === "no_worker") return "Waiting for a worker: none is online.";
    if (typeof snap.queue_position === "number") return "Queued: " + snap.queue_position + " ahead of it.";
    return snap.waiting === "queued" ? "Queued: waiting for a free worker." : "";
  }

  function render(snap) {
    if (!snap || typeof snap !== "object") return;
    last = Object.assign({}, last || {}, snap);
    if (typeof snap.failed === "number") failed = snap.failed;
    var pct = S.clampPercent(snap.progress_percent);
    var total = Number(snap.total) || 0;
    el.bar.value = pct;
    el.bar.setAttribute("aria-valuetext", (Number(snap.current) || 0) + " of " + total + " captioned");
    el.percent.textContent = pct + "%";
    el.count.textContent = S.formatCount(snap.current, snap.total);
    el.step.textContent = snap.current_step || "";
    var state = snap.state || "PENDING";
    if (cancelRequested && !TERMINAL[state]) state = "CANCELLING";
    setState(state);
    var words = waitingWords(Object.assign({}, snap, { state: state }));
    if (words !== el.waiting.textContent) {
      el.waiting.textContent = words;
      if (words && state === "PENDING" && spoken.current < 0) say(words);
    }
    el.waiting.hidden = !words;
    el.eta.textContent = TERMINAL[state] ? "" : S.formatEta(snap.estimated_completion);
    document.title = (TERMINAL[state] ? S.plainState(state, failed) : pct + "%") + " · " +
      $("job-title").textContent + " · Skald";
    setCancelable(!TERMINAL[state] && state !== "CANCELLING" && !ended);
    schedulePoll(state);
  }

  function endingWords(name, data) {
    if (name === "task_completed") {
      var r = data.results || {};
      var n = Number(r.failed) || failed;
      var done = Number(r.count) || 0;
      return n ? "Done, " + n + (n === 1 ? " image" : " images") + " could not be read; " + done + " captioned."
        : "Done: " + done + (done === 1 ? " caption." : " captions.");
    }
    if (name === "task_cancelled") {
      var made = data.completed !== undefined ? data.completed : data.current;
      return "Cancelled after " + (Number(made) || 0) + " of " + (Number(data.total) || 0) + " images.";
    }
    var msg = (data.error && (data.error.message || data.error.type)) || "unknown error";
    return "Failed: " + msg;
  }

  function onEnd(name, data) {
    ended = true;
    if (name === "task_completed" && data.results && typeof data.results.failed === "number") failed = data.results.failed;
    render(data);
    clearTimeout(spoken.timer);
    clearMessage();
    var kind = name === "task_completed" ? (failed ? "partial" : "done") : name === "task_cancelled" ? "cancelled" : "failed";
    el.ending.textContent = endingWords(name, data);
    el.ending.setAttribute("data-ending", kind);
    el.ending.className = "ending ending-" + kind;
    S.show(el.ending);
    say(el.ending.textContent);
    var focus = document.activeElement;
    if (!focus || focus === document.body || focus === el.cancel) el.ending.focus();
    review.load();  // statuses, captioners and failures, patched in place
    document.dispatchEvent(new CustomEvent("skald:job-ended", { detail: { kind: kind } }));
  }

  // ---- captions --------------------------------------------------------------------

  var review = window.SkaldReview.create({
    taskId: taskId, list: $("captions"), template: $("caption-template"),
    summary: $("review-summary"), announce: say
  });
  $("copy-all").addEventListener("click", function () { review.copyAll(); });
  $("approve-all").addEventListener("click", function (e) { review.approveAll(e.currentTarget); });

  var reloadTimer = null;
  function onProgress(data) {
    var before = last ? Number(last.current) || 0 : 0;
    render(data);
    paceProgress(data);
    var made = Array.isArray(data.recent_captions) ? data.recent_captions : (data.last_caption ? [data.last_caption] : []);
    var matched = 0;
    made.forEach(function (c) { if (c && review.captionMade(c.image, c.caption)) matched += 1; });
    // Images done without a caption (unreadable ones): fetch their rows, at most once a second.
    if ((Number(data.current) || 0) - before > matched && !reloadTimer) {
      reloadTimer = setTimeout(function () { reloadTimer = null; review.load(); }, 1000);
    }
  }

  // ---- live ----------------------------------------------------------------------------

  var CONN_WORDS = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", disconnected: "disconnected" };
  var watch = null;
  var pollTimer = null;

  function schedulePoll(state) {
    clearTimeout(pollTimer);
    if (state !== "PENDING" || ended || !watch) return;
    pollTimer = setTimeout(function () { watch.status(); }, WAIT_POLL_MS);  // "waiting" has no push
  }

  S.onConnState(function (kind, refusal) {
    el.conn.textContent = CONN_WORDS[kind] || kind;
    el.conn.setAttribute("data-conn", kind);
    if (kind === "reconnecting" && !ended) say("Connection lost; reconnecting.");
    if (kind === "disconnected" && refusal === "unauthorized") showMessage("Not logged in any more: reload the page to log in again.");
  });

  try {
    watch = S.live().watchTask(taskId, {
      onSnapshot: function (snap) { clearMessage(); render(snap); },
      onProgress: onProgress,
      onEnd: onEnd,
      onCaptionUpdated: function (row) { review.applyRow(row); },
      onError: function (err) {
        showMessage(err.message || err.code || "Could not follow this job.");
        if (err.code === "not_found") setCancelable(false);
      }
    });
  } catch (e) {
    showMessage("Live updates are unavailable: " + e.message);
  }

  // ---- cancel ----------------------------------------------------------------------------

  el.cancel.addEventListener("click", function () {
    if (!watch || ended || el.cancel.getAttribute("aria-disabled") === "true") return;
    setCancelable(false);
    clearMessage();
    say("Cancelling…");
    watch.cancel().then(function (ack) {
      if (ack.ok) {
        if (ended) return;
        cancelRequested = true;
        setState("CANCELLING");
        el.eta.textContent = "";
        say("Cancel requested: the job stops after the current image.");
        return;
      }
      var e = ack.error || {};
      showMessage(e.message || e.code || "Could not cancel this job.");
      say(el.message.textContent);
      // 'conflict': it already ended, and the ending is on its way.
      if (!ended && e.code !== "conflict") setCancelable(true);
    });
  });

  // ---- start -------------------------------------------------------------------------------

  if (el.created) el.created.textContent = S.formatTime(Number(el.created.getAttribute("data-unix")));
  var initial = null;
  try { initial = JSON.parse(($("initial-snapshot") || {}).textContent || "null"); } catch (e) { initial = null; }
  if (initial && typeof initial === "object") render(initial);
  review.load();
})();
