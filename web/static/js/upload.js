/* Skald: the upload form of the "New job" page.
 *
 * Files are checked here before anything is sent (type, size, count, total, with the
 * limits rendered into the form's data-*); a file that cannot be sent is listed with
 * its reason and can be removed, instead of the whole batch being refused. Choosing
 * more files adds them to the list. The upload shows a progress bar (XMLHttpRequest:
 * fetch() reports no upload progress). During maintenance the form is disabled with
 * the operator's message, and enabled again when it ends.
 */
(function () {
  "use strict";
  var S = window.Skald;

  function $(id) { return document.getElementById(id); }
  var form = $("upload-form");
  var el = {
    input: $("images"), submit: $("submit"), fields: $("upload-fields"),
    box: $("selection-box"), selection: $("selection"), list: $("file-list"),
    removeProblems: $("remove-problems"), clear: $("clear-files"),
    progressRow: $("upload-progress-row"), progress: $("upload-progress"),
    progressText: $("upload-progress-text"), status: $("upload-status"), error: $("upload-error"),
    notice: $("maintenance-notice"), noticeText: $("maintenance-notice-text")
  };
  var limits = {
    images: Number(form.getAttribute("data-max-images")) || 1000,
    imageBytes: Number(form.getAttribute("data-max-image-bytes")) || 20 * 1024 * 1024,
    requestBytes: Number(form.getAttribute("data-max-request-bytes")) || 200 * 1024 * 1024,
    accept: (form.getAttribute("data-accept") || "").split(",").filter(Boolean)
  };
  var chosen = [];         // [{file, problem}]
  var uploading = false;
  var blocked = S.maintenance().active || el.fields.disabled;

  // ---- checks ---------------------------------------------------------------------

  function extension(name) {
    var dot = name.lastIndexOf(".");
    return dot >= 0 ? name.slice(dot).toLowerCase() : "";
  }

  /** Why this file cannot be sent, or "" when it can. */
  function problemOf(file) {
    var types = limits.accept.filter(function (a) { return a.indexOf("/") > 0; });
    var exts = limits.accept.filter(function (a) { return a.charAt(0) === "."; });
    var typeOk = file.type ? types.indexOf(file.type) >= 0 : exts.indexOf(extension(file.name)) >= 0;
    if (!typeOk) return "not an image Skald can read";
    if (file.size === 0) return "the file is empty";
    if (file.size > limits.imageBytes) return "larger than " + S.formatBytes(limits.imageBytes);
    return "";
  }

  /** A problem of the batch as a whole, or "". */
  function batchProblem() {
    if (chosen.length > limits.images) {
      return "At most " + limits.images + " images fit in one job; remove " + (chosen.length - limits.images) + ".";
    }
    var total = chosen.reduce(function (n, c) { return n + c.file.size; }, 0);
    if (total > limits.requestBytes) {
      return "These files add up to " + S.formatBytes(total) + "; at most " + S.formatBytes(limits.requestBytes) + " can be sent at once.";
    }
    return "";
  }

  // ---- the list -------------------------------------------------------------------

  function render() {
    var rows = chosen.map(function (c, i) {
      var li = document.createElement("li");
      li.className = "file-item" + (c.problem ? " file-problem" : "");
      li.setAttribute("data-testid", "file-item");
      li.setAttribute("data-name", c.file.name);
      var name = document.createElement("span");
      name.className = "file-name";
      name.textContent = c.file.name;
      var size = document.createElement("span");
      size.className = "muted";
      size.textContent = S.formatBytes(c.file.size);
      li.append(name, " ", size);
      if (c.problem) {
        var why = document.createElement("span");
        why.className = "file-why";
        why.setAttribute("data-testid", "file-problem");
        why.textContent = "Cannot be sent: " + c.problem;
        li.append(" ", why);
      }
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button small-button";
      remove.setAttribute("data-testid", "file-remove");
      remove.textContent = "Remove";
      var hiddenName = document.createElement("span");
      hiddenName.className = "visually-hidden";
      hiddenName.textContent = " " + c.file.name;
      remove.appendChild(hiddenName);
      remove.addEventListener("click", function () { removeAt(i); });
      li.appendChild(remove);
      return li;
    });
    el.list.replaceChildren.apply(el.list, rows);
    var bad = chosen.filter(function (c) { return c.problem; }).length;
    var n = chosen.length;
    el.selection.textContent = n ? n + (n === 1 ? " file" : " files") + " chosen" +
      (bad ? ", " + bad + " cannot be sent" : "") + "." : "";
    el.box.hidden = !n;
    el.removeProblems.hidden = !bad;
  }

  function removeAt(i) {
    chosen.splice(i, 1);
    render();
    clearError();
    var buttons = el.list.querySelectorAll("[data-testid=file-remove]");
    var next = buttons[Math.min(i, buttons.length - 1)];
    (next || el.input).focus();
  }

  function add(files) {
    files.forEach(function (file) {
      var dup = chosen.some(function (c) {
        return c.file.name === file.name && c.file.size === file.size && c.file.lastModified === file.lastModified;
      });
      if (!dup) chosen.push({ file: file, problem: problemOf(file) });
    });
    render();
  }

  el.input.addEventListener("change", function () {
    add(el.input.files ? Array.prototype.slice.call(el.input.files) : []);
    el.input.value = "";  // choosing the same file again adds it again after a removal
    clearError();
  });
  el.removeProblems.addEventListener("click", function () {
    chosen = chosen.filter(function (c) { return !c.problem; });
    render();
    clearError();
    el.input.focus();
  });
  el.clear.addEventListener("click", function () {
    chosen = [];
    render();
    clearError();
    el.input.focus();
  });

  // ---- messages ---------------------------------------------------------------------

  function showError(text) {
    el.error.textContent = text;
    S.show(el.error);
    el.error.focus();
  }

  function clearError() {
    el.error.textContent = "";
    S.hide(el.error);
  }

  function setProgress(sent, total) {
    var pct = total ? Math.round(100 * sent / total) : 0;
    el.progress.value = pct;
    el.progress.setAttribute("aria-valuetext", S.formatBytes(sent) + " of " + S.formatBytes(total) + " sent");
    el.progressText.textContent = pct + "%";
  }

  // ---- sending ----------------------------------------------------------------------

  /** A server refusal naming a file marks that file in the list. */
  function markRefused(message) {
    var hit = chosen.filter(function (c) { return message.indexOf(c.file.name) === 0; })[0];
    if (hit) { hit.problem = message.slice(hit.file.name.length).replace(/^[:\s]+/, "") || "refused"; render(); }
  }

  function finish(xhr) {
    uploading = false;
    el.submit.removeAttribute("aria-disabled");
    var data = null;
    try { data = JSON.parse(xhr.responseText || "null"); } catch (e) { data = null; }
    if (xhr.status === 202 && data && data.task_id) {
      el.status.textContent = "Uploaded; opening the job…";
      window.location.assign("/jobs/" + encodeURIComponent(data.task_id));
      return;
    }
    S.hide(el.progressRow);
    el.status.textContent = "";
    var message = S.errorMessage({ status: xhr.status, data: data }, "The upload failed.");
    if (data && data.error && data.error.code === "unsupported") markRefused(data.error.message || "");
    showError(message);
  }

  function send() {
    var body = new FormData();
    chosen.forEach(function (c) { body.append("images", c.file, c.file.name); });
    var total = chosen.reduce(function (n, c) { return n + c.file.size; }, 0);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", S.csrfToken());
    xhr.upload.addEventListener("progress", function (e) {
      setProgress(e.loaded, e.lengthComputable ? e.total : total);
    });
    xhr.addEventListener("load", function () { finish(xhr); });
    xhr.addEventListener("error", function () { finish({ status: 0, responseText: "" }); });
    uploading = true;
    el.submit.setAttribute("aria-disabled", "true");  // focus stays on the button
    setProgress(0, total);
    S.show(el.progressRow);
    el.status.textContent = "Uploading " + chosen.length + (chosen.length === 1 ? " image…" : " images…");
    xhr.send(body);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (uploading) return;
    clearError();
    if (blocked) { showError("New jobs cannot be started during maintenance."); return; }
    if (!chosen.length) { showError("Choose at least one image."); el.input.focus(); return; }
    var bad = chosen.filter(function (c) { return c.problem; });
    if (bad.length) {
      showError(bad.length + (bad.length === 1 ? " file cannot" : " files cannot") +
                " be sent: remove " + (bad.length === 1 ? "it" : "them") + " first (" +
                bad.map(function (c) { return c.file.name; }).slice(0, 5).join(", ") + (bad.length > 5 ? ", …" : "") + ").");
      return;
    }
    var problem = batchProblem();
    if (problem) { showError(problem); return; }
    send();
  });

  // ---- maintenance ------------------------------------------------------------------

  document.addEventListener("skald:maintenance", function (e) {
    var status = e.detail || {};
    blocked = !!status.active;
    el.noticeText.textContent = status.message ? ": " + status.message : "";
    el.notice.hidden = !blocked;
    if (!el.fields.contains(document.activeElement) || !blocked) el.fields.disabled = blocked;
    else el.submit.setAttribute("aria-disabled", "true");  // not out from under focus
    if (!blocked && !uploading) el.submit.removeAttribute("aria-disabled");
  });
  el.fields.addEventListener("focusout", function () {
    if (blocked) setTimeout(function () { if (!el.fields.contains(document.activeElement)) el.fields.disabled = true; }, 0);
  });
})();
