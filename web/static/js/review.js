/* Skald: the caption list of the job page, for review before posting.
 *
 * window.SkaldReview.create({taskId, list, template, summary, announce}) -> review:
 *   review.load()                  GET .../captions; rows are added or patched in place
 *   review.captionMade(image, text) a caption from progress_update (by file name)
 *   review.applyRow(row)           a row from caption_updated or an API answer
 * Each row: thumbnail, name, status, the captioner or editor, the error of an image
 * that could not be read, and Edit (inline, with a count against 1500), Copy and
 * Approve. The list is no live region and is never rebuilt: rows change in place,
 * so a screen reader never reads 160 captions twice. Buttons that are busy get
 * aria-disabled, never disabled, so focus stays where it is.
 */
(function () {
  "use strict";
  var S = window.Skald;
  var MAX = 1500;
  var STATUS_WORDS = { pending: "Waiting", generated: "Generated", edited: "Edited",
                       approved: "Approved", failed: "Could not be read" };

  function hiddenText(text) {
    var span = document.createElement("span");
    span.className = "visually-hidden";
    span.textContent = text;
    return span;
  }

  function label(button, visible, hidden) {
    button.replaceChildren(document.createTextNode(visible), hiddenText(hidden));
  }

  function busy(button, on) {
    if (on) button.setAttribute("aria-disabled", "true");
    else button.removeAttribute("aria-disabled");
  }

  function isBusy(button) { return button.getAttribute("aria-disabled") === "true"; }

  /** Copy text to the clipboard; resolves true when it worked. */
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; }, function () { return legacyCopy(text); });
    }
    return Promise.resolve(legacyCopy(text));
  }

  function legacyCopy(text) {
    var area = document.createElement("textarea");
    var focused = document.activeElement;
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    if (focused && focused.focus) focused.focus();
    return ok;
  }

  function create(opts) {
    var rows = new Map();      // image_id -> {data, li, parts}
    var order = [];            // image ids in upload order
    var taskId = opts.taskId;
    var announce = opts.announce || function () {};
    var base = "/api/jobs/" + encodeURIComponent(taskId) + "/captions";

    function parts(li) {
      var q = function (sel) { return li.querySelector(sel); };
      return { thumb: q(".thumb"), name: q(".caption-name"), status: q(".status"), by: q(".caption-by"),
               error: q(".caption-error"), text: q(".caption-text"), edit: q("[data-action=edit]"),
               copy: q("[data-action=copy]"), approve: q("[data-action=approve]"), form: q(".caption-edit"),
               label: q(".edit-label"), area: q(".edit-text"), counter: q(".counter"), formError: q(".edit-error"),
               discard: q("[data-action=discard]") };
    }

    function paint(entry) {
      var r = entry.data, p = entry.parts, li = entry.li;
      li.setAttribute("data-status", r.status);
      li.setAttribute("data-image", r.image);
      if (!p.thumb.getAttribute("src") && r.thumbnail_url) p.thumb.src = r.thumbnail_url;
      p.name.textContent = r.image;
      p.status.textContent = STATUS_WORDS[r.status] || r.status;
      p.status.setAttribute("data-status", r.status);
      p.by.textContent = r.edited_by ? " · changed by " + r.edited_by : (r.captioner ? " · by " + r.captioner : "");
      p.error.hidden = !r.error;
      p.error.textContent = r.error ? "This image could not be read: " + r.error : "";
      var has = typeof r.caption === "string" && r.caption !== "";
      p.text.textContent = has ? r.caption : (r.status === "pending" ? "Not captioned yet." : "No caption yet.");
      p.text.classList.toggle("muted", !has);
      p.edit.hidden = r.status === "pending";
      label(p.edit, has ? "Edit" : "Write a caption", " for " + r.image);
      p.copy.hidden = !has;
      label(p.copy, "Copy", " the caption of " + r.image);
      p.approve.hidden = !has;
      var approved = r.status === "approved";
      label(p.approve, approved ? "Approved" : "Approve", " the caption of " + r.image);
      busy(p.approve, approved);
    }

    function build(r) {
      var li = opts.template.content.firstElementChild.cloneNode(true);
      var entry = { data: r, li: li, parts: parts(li) };
      var p = entry.parts;
      li.setAttribute("data-image-id", String(r.image_id));
      p.area.id = "edit-" + r.image_id;
      p.counter.id = "counter-" + r.image_id;
      p.formError.id = "edit-error-" + r.image_id;
      p.label.setAttribute("for", p.area.id);
      p.label.textContent = "Caption for " + r.image;
      p.area.setAttribute("aria-describedby", p.counter.id);
      p.thumb.addEventListener("error", function () { p.thumb.classList.add("no-thumb"); p.thumb.removeAttribute("src"); });
      p.edit.addEventListener("click", function () { openEditor(entry); });
      p.copy.addEventListener("click", function () { copyOne(entry); });
      p.approve.addEventListener("click", function () { approveOne(entry); });
      p.discard.addEventListener("click", function () { closeEditor(entry, true); });
      p.form.addEventListener("submit", function (e) { e.preventDefault(); save(entry); });
      p.area.addEventListener("input", function () { count(entry); });
      p.area.addEventListener("keydown", function (e) {
        if (e.key === "Escape") { e.preventDefault(); closeEditor(entry, true); }
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); save(entry); }
      });
      paint(entry);
      return entry;
    }

    /** Add a row, or patch the one there is (a change older than what is shown loses). */
    function applyRow(r) {
      if (!r || typeof r !== "object" || r.image_id === undefined) return;
      var entry = rows.get(r.image_id);
      if (!entry) {
        entry = build(r);
        rows.set(r.image_id, entry);
        order.push(r.image_id);
        opts.list.appendChild(entry.li);
      } else {
        var old = entry.data;
        if (typeof old.updated_at === "number" && typeof r.updated_at === "number" && r.updated_at < old.updated_at) return;
        entry.data = Object.assign({}, old, r);
        paint(entry);
      }
      summarise();
    }

    function captionMade(image, text) {
      var id = order.filter(function (i) { var d = rows.get(i).data; return d.image === image && d.status === "pending"; })[0];
      if (id === undefined) return false;
      var entry = rows.get(id);
      entry.data = Object.assign({}, entry.data, { caption: text, status: "generated" });
      paint(entry);
      summarise();
      return true;
    }

    function summarise() {
      var n = { pending: 0, generated: 0, edited: 0, approved: 0, failed: 0 };
      rows.forEach(function (e) { n[e.data.status] = (n[e.data.status] || 0) + 1; });
      var bits = [];
      if (n.pending) bits.push(n.pending + " waiting");
      if (n.generated + n.edited) bits.push((n.generated + n.edited) + " to review");
      if (n.approved) bits.push(n.approved + " approved");
      if (n.failed) bits.push(n.failed + (n.failed === 1 ? " image" : " images") + " could not be read");
      opts.summary.textContent = bits.join(" · ");
    }

    function load() {
      return S.apiFetch(base).then(function (result) {
        if (result.ok && result.data && Array.isArray(result.data.captions)) result.data.captions.forEach(applyRow);
        return result;
      });
    }

    // ---- editing ----------------------------------------------------------------------

    function count(entry) {
      var n = entry.parts.area.value.length;
      entry.parts.counter.textContent = n + " of " + MAX + " characters";
      entry.parts.counter.classList.toggle("counter-full", n >= MAX);
    }

    function openEditor(entry) {
      var p = entry.parts;
      p.area.value = entry.data.caption || "";
      p.formError.hidden = true;
      p.area.setAttribute("aria-describedby", p.counter.id);
      p.form.hidden = false;
      p.edit.hidden = true;
      count(entry);
      p.area.focus();
    }

    function closeEditor(entry, discarded) {
      var p = entry.parts;
      p.form.hidden = true;
      paint(entry);
      p.edit.focus();
      if (discarded) announce("Edit discarded.");
    }

    function formError(entry, text) {
      var p = entry.parts;
      p.formError.textContent = text;
      p.formError.hidden = false;
      p.area.setAttribute("aria-describedby", p.counter.id + " " + p.formError.id);
      p.area.focus();
      announce(text);
    }

    function patch(entry, body) {
      return S.apiFetch(base + "/" + encodeURIComponent(entry.data.image_id), {
        method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
      });
    }

    function save(entry) {
      var p = entry.parts;
      var text = p.area.value.trim();
      if (!text) { formError(entry, "Write a caption before saving, or cancel."); return; }
      if (text.length > MAX) { formError(entry, "A caption is at most " + MAX + " characters."); return; }
      patch(entry, { caption: text }).then(function (result) {
        if (!result.ok) { formError(entry, S.errorMessage(result, "Could not save the caption.")); return; }
        applyRow(result.data);
        closeEditor(entry, false);
        announce("Saved the caption of " + entry.data.image + ".");
      });
    }

    function approveOne(entry) {
      var button = entry.parts.approve;
      if (isBusy(button)) return;
      busy(button, true);
      patch(entry, { status: "approved" }).then(function (result) {
        if (!result.ok) {
          busy(button, false);
          announce(S.errorMessage(result, "Could not approve the caption."));
          return;
        }
        applyRow(result.data);
        announce("Approved the caption of " + entry.data.image + ".");
      });
    }

    function copyOne(entry) {
      copyText(entry.data.caption || "").then(function (ok) {
        announce(ok ? "Copied the caption of " + entry.data.image + "." : "Copying is not allowed here; select the text instead.");
      });
    }

    function copyAll() {
      var blocks = order.map(function (id) { return rows.get(id).data; })
        .filter(function (d) { return typeof d.caption === "string" && d.caption; })
        .map(function (d) { return d.image + "\n" + d.caption; });
      if (!blocks.length) { announce("There is no caption to copy yet."); return Promise.resolve(false); }
      return copyText(blocks.join("\n\n")).then(function (ok) {
        announce(ok ? "Copied " + blocks.length + (blocks.length === 1 ? " caption." : " captions.")
          : "Copying is not allowed here; select the text instead.");
        return ok;
      });
    }

    function approveAll(button) {
      if (isBusy(button)) return;
      busy(button, true);
      S.apiFetch(base + "/approve", { method: "POST" }).then(function (result) {
        busy(button, false);
        if (!result.ok || !result.data) { announce(S.errorMessage(result, "Could not approve the captions.")); return; }
        var n = Number(result.data.approved) || 0;
        load().then(function () {
          announce(n ? "Approved " + n + (n === 1 ? " caption." : " captions.") : "Nothing left to approve.");
        });
      });
    }

    return { load: load, applyRow: applyRow, captionMade: captionMade, copyAll: copyAll,
             approveAll: approveAll, size: function () { return rows.size; } };
  }

  window.SkaldReview = { create: create, copyText: copyText };
})();
