/* SkaldLive: the live Socket.IO connection to Skald, for Skald's own pages and any other
 * application's page (it needs only the Socket.IO client, window.io or options.io).
 * Reusable as it is: load Skald's /static/vendor/socket.io/socket.io.min.js and
 * /static/js/live.js (the other page's origin must be in Skald's CORS_ALLOWED_ORIGINS).
 *
 * One task of any Celery application, with only a watch token (PROTOCOL.md):
 *
 *   var watch = SkaldLive.watch({
 *     url: "https://skald.example", taskId: ID, watchToken: TOKEN,
 *     onProgress: function (update) {},   // progress_update: current, total, progress_percent,
 *                                         // current_step, extra
 *     onEnd: function (eventName, payload) {},  // once: task_completed (payload.results.result),
 *                                               // task_cancelled or task_error (payload.error)
 *     onError: function (error) {},       // {code, message}, e.g. not_found for a bad token
 *     onState: function (kind) {}         // the connection's state, as below
 *   });
 *   watch.cancel()  // with a token minted --cancel;  watch.stop()  // leave; watch.live.socket
 *
 *   var live = SkaldLive.connect({
 *     url: "https://skald.example",        // default: this page's origin
 *     auth: {token: T} | {watch_token: W},  // default: none (the session cookie)
 *     onState: function (kind) {}          // "connecting" | "live" | "reconnecting" | "disconnected"
 *   });
 *   var watch = live.watchTask(taskId, {
 *     watchToken: W,                  // also sent in join_task / get_task_status payloads
 *     onSnapshot: function (snap, source) {},   // source: "join" | "status"
 *     onProgress: function (update) {},         // progress_update, in order, never after the ending
 *     onEnd: function (eventName, payload) {},  // exactly once per task
 *     onCaptionUpdated: function (row) {},
 *     onError: function (error) {}              // {code, message}: join refused or no answer
 *   });
 *   watch.cancel()  -> Promise of the cancel_task ack
 *   watch.status()  -> Promise of the get_task_status ack (onSnapshot is called too)
 *   watch.stop()    -> leave_task; nothing more is delivered
 *   live.joinAdmin({onJoined: function (ack, again) {}, onError: function (error) {}})
 *                                // again: true when it is a re-join after a reconnect
 *   live.on(eventName, handler)  // any other server event (maintenance_status, job_update, ...)
 *
 * Joins are sent again after every reconnect. Ending rule (PROTOCOL.md): the first
 * terminal event of a task is its one ending; later terminal events, progress updates
 * and snapshots of that task are dropped, as are updates older than the newest seen.
 */
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.SkaldLive = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var ENDINGS = ["task_completed", "task_cancelled", "task_error"];
  var TERMINAL = { SUCCESS: true, FAILURE: true, REVOKED: true };
  var ACK_TIMEOUT_MS = 10000;

  function noop() {}

  function report(e) {
    if (typeof console !== "undefined") console.error(e);
  }

  function ourTask(payload, taskId) {
    return !!payload && typeof payload === "object" && payload.task_id === taskId;
  }

  /** One task followed over a connection (see watchTask above). */
  function TaskWatch(conn, taskId, options) {
    this.conn = conn;
    this.taskId = taskId;
    this.options = options || {};
    this.ended = null;        // name of the ending, once received
    this.lastUpdate = null;   // updated_at of the newest update delivered
    this.stopped = false;
  }

  TaskWatch.prototype.payload = function () {
    var body = { task_id: this.taskId };
    if (this.options.watchToken) body.watch_token = this.options.watchToken;
    return body;
  };

  TaskWatch.prototype.call = function (name, cb) {
    var fn = this.options[name];
    if (this.stopped || typeof fn !== "function") return;
    try { cb(fn); } catch (e) { report(e); }
  };

  TaskWatch.prototype.join = function () {
    var self = this;
    this.conn.request("join_task", this.payload()).then(function (ack) {
      if (ack.ok) self.snapshot(ack.snapshot, "join");
      else self.call("onError", function (fn) { fn(ack.error || { code: "unavailable", message: "" }); });
    });
  };

  TaskWatch.prototype.snapshot = function (snap, source) {
    if (this.ended || !ourTask(snap, this.taskId)) return;
    this.call("onSnapshot", function (fn) { fn(snap, source); });
  };

  TaskWatch.prototype.progress = function (data) {
    if (this.ended || !ourTask(data, this.taskId)) return;
    if (typeof data.updated_at === "number" && this.lastUpdate !== null && data.updated_at < this.lastUpdate) return;
    if (typeof data.updated_at === "number") this.lastUpdate = data.updated_at;
    this.call("onProgress", function (fn) { fn(data); });
  };

  TaskWatch.prototype.end = function (name, data) {
    if (this.ended || !ourTask(data, this.taskId)) return;
    this.ended = name;
    this.call("onEnd", function (fn) { fn(name, data); });
  };

  TaskWatch.prototype.captionUpdated = function (row) {
    if (!ourTask(row, this.taskId)) return;
    this.call("onCaptionUpdated", function (fn) { fn(row); });
  };

  TaskWatch.prototype.cancel = function () {
    return this.conn.request("cancel_task", this.payload());
  };

  TaskWatch.prototype.status = function () {
    var self = this;
    return this.conn.request("get_task_status", this.payload()).then(function (ack) {
      if (ack.ok && ack.snapshot && TERMINAL[ack.snapshot.state] && !self.ended) {
        self.join();  // it ended meanwhile: a join brings its one ending
      } else if (ack.ok) {
        self.snapshot(ack.snapshot, "status");
      }
      return ack;
    });
  };

  TaskWatch.prototype.stop = function () {
    if (this.stopped) return;
    this.stopped = true;
    delete this.conn.tasks[this.taskId];
    if (this.conn.socket.connected) this.conn.socket.emit("leave_task", { task_id: this.taskId });
  };

  /** A connection (see connect above). */
  function Live(options) {
    var self = this;
    var io = options.io || (typeof window !== "undefined" ? window.io : null);
    if (typeof io !== "function") throw new Error("the Socket.IO client (io) is not loaded");
    var ioOptions = { transports: ["websocket"] };
    if (options.auth) ioOptions.auth = options.auth;
    this.socket = options.url ? io(options.url, ioOptions) : io(ioOptions);
    this.tasks = {};
    this.admin = null;
    this.onState = typeof options.onState === "function" ? options.onState : noop;
    this.state = "connecting";
    this.refusal = null;   // the server's message when it refused the connection

    var s = this.socket;
    s.on("connect", function () {
      self.setState("live");
      Object.keys(self.tasks).forEach(function (id) { self.tasks[id].join(); });
      if (self.admin) self.joinAdmin(self.admin.options);
    });
    s.on("disconnect", function () { self.setState(s.active ? "reconnecting" : "disconnected"); });
    s.on("connect_error", function (err) {
      if (!s.active) self.refusal = (err && err.message) || "refused";
      self.setState(s.active ? "reconnecting" : "disconnected");
    });
    if (s.io && typeof s.io.on === "function") {
      s.io.on("reconnect_attempt", function () { self.setState("reconnecting"); });
    }
    s.on("progress_update", function (data) { self.each(data, function (w) { w.progress(data); }); });
    ENDINGS.forEach(function (name) {
      s.on(name, function (data) { self.each(data, function (w) { w.end(name, data); }); });
    });
    s.on("caption_updated", function (row) { self.each(row, function (w) { w.captionUpdated(row); }); });
  }

  Live.prototype.setState = function (kind) {
    this.state = kind;
    try { this.onState(kind, this.refusal); } catch (e) { report(e); }
  };

  Live.prototype.each = function (data, fn) {
    var watch = data && typeof data === "object" ? this.tasks[data.task_id] : null;
    if (watch) fn(watch);
  };

  /** Emit with an acknowledgement; resolves to the ack, or to an "unavailable" error. */
  Live.prototype.request = function (name, payload) {
    var s = this.socket;
    return new Promise(function (resolve) {
      s.timeout(ACK_TIMEOUT_MS).emit(name, payload, function (err, ack) {
        if (err) resolve({ ok: false, error: { code: "timeout", message: "The server did not answer in time." } });
        else resolve(ack && typeof ack === "object" ? ack : { ok: false, error: { code: "invalid", message: "" } });
      });
    });
  };

  Live.prototype.watchTask = function (taskId, options) {
    var existing = this.tasks[taskId];
    if (existing) existing.stop();
    var watch = new TaskWatch(this, taskId, options);
    this.tasks[taskId] = watch;
    if (this.socket.connected) watch.join();
    return watch;
  };

  Live.prototype.joinAdmin = function (options) {
    var self = this;
    var admin = this.admin = { options: options || {}, joined: this.admin ? this.admin.joined : false };
    if (!this.socket.connected) return;
    this.request("join_admin_dashboard", {}).then(function (ack) {
      var o = admin.options;
      if (ack.ok) {
        var again = admin.joined;
        admin.joined = true;
        if (typeof o.onJoined === "function") o.onJoined(ack, again);
      } else if (typeof o.onError === "function") {
        o.onError(ack.error || {});
      }
    });
  };

  Live.prototype.on = function (name, handler) {
    this.socket.on(name, handler);
    return this;
  };

  /** Connect with a watch token alone and follow its one task (see the top of this file). */
  function watch(options) {
    var o = options || {};
    var live = new Live({ url: o.url, io: o.io, auth: { watch_token: o.watchToken }, onState: o.onState });
    var task = live.watchTask(o.taskId, {
      watchToken: o.watchToken, onSnapshot: o.onSnapshot, onProgress: o.onProgress,
      onEnd: o.onEnd, onError: o.onError
    });
    task.live = live;
    return task;
  }

  return {
    connect: function (options) { return new Live(options || {}); },
    watch: watch,
    ENDINGS: ENDINGS,
    TERMINAL: TERMINAL
  };
});
