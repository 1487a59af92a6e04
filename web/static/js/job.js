/* Skald: the live job page (/jobs/<task_id>).
 *
 * Sources of truth, in the order they usually arrive:
 *   1. the snapshot rendered into <script id="initial-snapshot">,
 *   2. GET /api/jobs/<id>/captions (captions made before the page opened),
 *   3. the join_task ack (sent again after every reconnect),
 *   4. room events progress_update / task_completed / task_cancelled / task_error.
 * Exactly-one-ending rule: after the first terminal event, progress_update is
 * ignored and a terminal event of another kind is ignored too.
 */
(function () {
  "use strict";
  var S = window.Skald;

  var root = document.getElementById("job");
  var taskId = root.getAttribute("data-task-id");

  var el = {
    bar: document.getElementById("bar"),
    percent: document.getElementById("percent"),
    state: document.getElementById("state"),
    step: document.getElementById("step"),
    eta: document.getElementById("eta"),
    count: document.getElementById("count"),
    cancel: document.getElementById("cancel"),
    captions: document.getElementById("captions"),
    ending: document.getElementById("ending"),
    conn: document.getElementById("conn"),
    message: document.getElementById("message")
  };

  var TERMINAL_STATES = { SUCCESS: true, FAILURE: true, REVOKED: true };
  var ACK_TIMEOUT_MS = 10000;

  var lastSnapshot = null;  // last snapshot rendered
  var endedBy = null;       // name of the terminal event received, or null
  var cancelRequested = false;
  var captionItems = new Map(); // image name -> <li>

  // ---- rendering -----------------------------------------------------------

  function showMessage(text) {
    el.message.textContent = text;
    S.show(el.message);
  }

  function clearMessage() {
    el.message.textContent = "";
    S.hide(el.message);
  }

  function setState(state) {
    el.state.textContent = state;
    el.state.setAttribute("data-state", state);
  }

  function isOurs(payload) {
    return payload && typeof payload === "object" && payload.task_id === taskId;
  }

  /** Paint a snapshot's numbers and texts (no ending logic here). */
  function renderSnapshot(snap) {
    if (!snap || typeof snap !== "object") return;
    lastSnapshot = snap;
    var pct = S.clampPercent(snap.progress_percent);
    el.bar.value = pct;
    el.percent.textContent = pct + "%";
    el.count.textContent = S.formatCount(snap.current, snap.total);
    el.step.textContent = snap.current_step || "";

    var state = snap.state || "PENDING";
    // A cancel the server accepted stays visible until the job really ends,
    // even if a progress_update still in flight says PROGRESS.
    if (cancelRequested && !TERMINAL_STATES[state]) state = "CANCELLING";
    setState(state);

    var ended = TERMINAL_STATES[state] || endedBy;
    el.eta.textContent = ended ? "" : S.formatEta(snap.estimated_completion);
    document.title = (ended ? state : pct + "%") + " · Job " + taskId.slice(0, 8) + " · Skald";
    if (ended) {
      el.cancel.disabled = true;
    } else if (state === "CANCELLING") {
      el.cancel.disabled = true;
    }
  }

  function setEnding(kind, text) {
    el.ending.textContent = text;
    el.ending.setAttribute("data-ending", kind);
    el.ending.className = "ending ending-" + kind;
    S.show(el.ending);
  }

  /**
   * A snapshot (initial page data or join ack) that is already terminal: show
   * a provisional ending until the terminal event (which the server sends on
   * join) replaces it with exact numbers.
   */
  function provisionalEnding(snap) {
    if (endedBy || !snap || !TERMINAL_STATES[snap.state]) return;
    el.cancel.disabled = true;
    if (snap.state === "SUCCESS") {
      var r = snap.results;
      if (r) setEnding("done", "Done: " + (r.count || 0) + " captions (" + (r.failed || 0) + " failed)");
      else setEnding("done", "Done: " + (Number(snap.current) || 0) + " captions");
    } else if (snap.state === "REVOKED") {
      var done = snap.completed !== undefined ? snap.completed : snap.current;
      setEnding("cancelled", "Cancelled after " + (Number(done) || 0) + " of " + (Number(snap.total) || 0) + " images");
    } else {
      var msg = snap.error && snap.error.message;
      setEnding("failed", "Failed" + (msg ? ": " + msg : ""));
    }
  }

  // ---- captions ------------------------------------------------------------

  function captionItem(image, caption) {
    var li = document.createElement("li");
    li.setAttribute("data-image", image);
    var name = document.createElement("strong");
    name.textContent = image;
    var text = document.createElement("span");
    text.className = "caption-text";
    if (caption === null || caption === undefined || caption === "") {
      text.textContent = "(no caption)";
      text.classList.add("muted");
    } else {
      text.textContent = caption;
    }
    li.append(name, " ", text);
    return li;
  }

  /** Append a caption unless that image is already listed. */
  function addCaption(image, caption) {
    if (image === null || image === undefined) return;
    image = String(image);
    if (captionItems.has(image)) return;
    var li = captionItem(image, caption);
    captionItems.set(image, li);
    el.captions.appendChild(li);
  }

  /** Replace the whole list (task_completed carries the full result set). */
  function setCaptions(list) {
    captionItems.clear();
    el.captions.replaceChildren();
    list.forEach(function (c) { if (c) addCaption(c.image, c.caption); });
  }

  function loadCaptions() {
    S.apiFetch("/api/jobs/" + encodeURIComponent(taskId) + "/captions").then(function (result) {
      if (!result.ok || !result.data || !Array.isArray(result.data.captions)) return;
      result.data.captions.forEach(function (c) { if (c) addCaption(c.image, c.caption); });
    });
  }

  // ---- terminal events -------------------------------------------------------

  /** Returns false when this terminal event must be ignored. */
  function acceptEnding(eventName) {
    if (endedBy && endedBy !== eventName) return false;
    endedBy = eventName;
    el.cancel.disabled = true;
    clearMessage();
    return true;
  }

  function onCompleted(data) {
    if (!isOurs(data) || !acceptEnding("task_completed")) return;
    renderSnapshot(data);
    var r = data.results || {};
    if (Array.isArray(r.captions)) setCaptions(r.captions);
    setEnding("done", "Done: " + (Number(r.count) || 0) + " captions (" + (Number(r.failed) || 0) + " failed)");
  }

  function onCancelled(data) {
    if (!isOurs(data) || !acceptEnding("task_cancelled")) return;
    renderSnapshot(data);
    var done = data.completed !== undefined ? data.completed : data.current;
    setEnding("cancelled", "Cancelled after " + (Number(done) || 0) + " of " + (Number(data.total) || 0) + " images");
  }

  function onError(data) {
    if (!isOurs(data) || !acceptEnding("task_error")) return;
    renderSnapshot(data);
    var msg = (data.error && (data.error.message || data.error.type)) || "unknown error";
    setEnding("failed", "Failed: " + msg);
  }

  function onProgress(data) {
    if (!isOurs(data) || endedBy) return;
    // Drop updates older than what is already shown (out-of-order delivery).
    if (lastSnapshot && typeof data.updated_at === "number" &&
        typeof lastSnapshot.updated_at === "number" && data.updated_at < lastSnapshot.updated_at) {
      return;
    }
    renderSnapshot(data);
    // The bridge sends at most one update per 100 ms; recent_captions holds
    // every caption folded into this one (last_caption only the newest).
    const captions = Array.isArray(data.recent_captions) ? data.recent_captions
      : (data.last_caption ? [data.last_caption] : []);
    captions.forEach((c) => addCaption(c.image, c.caption));
  }

  // ---- socket ------------------------------------------------------------------

  function setConn(kind, text) {
    el.conn.textContent = text;
    el.conn.setAttribute("data-conn", kind);
  }

  var socket;
  try {
    socket = S.skaldSocket();
  } catch (e) {
    setConn("disconnected", "disconnected");
    showMessage("Live updates are unavailable: " + e.message);
  }

  function join() {
    setConn("live", "live");
    socket.timeout(ACK_TIMEOUT_MS).emit("join_task", { task_id: taskId }, function (err, ack) {
      if (err) { showMessage("The server did not answer join_task in time."); return; }
      if (ack && ack.ok) {
        if (!endedBy) clearMessage();
        // A stale ack must not undo a terminal event already shown.
        if (ack.snapshot && !endedBy) {
          renderSnapshot(ack.snapshot);
          provisionalEnding(ack.snapshot);
        }
      } else {
        var e = (ack && ack.error) || {};
        showMessage(e.message || e.code || "Could not follow this job.");
        if (e.code === "not_found") el.cancel.disabled = true;
      }
    });
  }

  if (socket) {
    socket.on("connect", join); // also fires after each reconnect: re-join the room
    socket.on("disconnect", function () {
      // socket.active is false when the client will not retry by itself
      // (server-side disconnect or refused connection).
      if (socket.active) setConn("reconnecting", "reconnecting…");
      else setConn("disconnected", "disconnected");
    });
    socket.on("connect_error", function (err) {
      if (socket.active) {
        setConn("reconnecting", "reconnecting…");
      } else {
        setConn("disconnected", "disconnected");
        if (err && err.message === "unauthorized") showMessage("Not logged in: reload the page to log in again.");
      }
    });
    socket.io.on("reconnect_attempt", function () { setConn("reconnecting", "reconnecting…"); });

    socket.on("progress_update", onProgress);
    socket.on("task_completed", onCompleted);
    socket.on("task_cancelled", onCancelled);
    socket.on("task_error", onError);

    if (socket.connected) join();
  }

  // ---- cancel ------------------------------------------------------------------

  el.cancel.addEventListener("click", function () {
    if (!socket || endedBy) return;
    el.cancel.disabled = true;
    clearMessage();
    socket.timeout(ACK_TIMEOUT_MS).emit("cancel_task", { task_id: taskId }, function (err, ack) {
      if (err) {
        showMessage("The server did not answer the cancel request in time.");
        if (!endedBy) el.cancel.disabled = false;
        return;
      }
      if (ack && ack.ok) {
        if (endedBy) return;
        cancelRequested = true;
        setState("CANCELLING");
        el.eta.textContent = "";
      } else {
        var e = (ack && ack.error) || {};
        showMessage(e.message || e.code || "Could not cancel this job.");
        // 'conflict' means it already ended: the terminal event is on its way.
        if (!endedBy && e.code !== "conflict") el.cancel.disabled = false;
      }
    });
  });

  // ---- start -------------------------------------------------------------------

  var initial = null;
  try {
    var node = document.getElementById("initial-snapshot");
    initial = node ? JSON.parse(node.textContent || "null") : null;
  } catch (e) { initial = null; }
  if (initial && typeof initial === "object") {
    renderSnapshot(initial);
    provisionalEnding(initial);
    if (initial.last_caption) addCaption(initial.last_caption.image, initial.last_caption.caption);
  }
  loadCaptions();
})();
