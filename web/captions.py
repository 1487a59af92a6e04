"""Caption rows of a job, as PROTOCOL.md's "Reviewing captions" shows them, and edits to them.

A row exists for every image of a job, in upload order; an image the worker
has not reached yet has no ``Caption`` in the database and is ``pending``. The
worker writes each caption once; people then edit, approve or (for an image
that could not be read) write one. ``generated`` keeps the captioner's text
when a person replaces it.
"""
from __future__ import annotations

import csv
import io
import time
import unicodedata
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.models import CAPTION_STATUSES, Caption, Image
from web.errors import ApiError

MAX_CAPTION = 1500  # Mastodon's alt-text limit (PROTOCOL.md)
EDIT_KEYS = frozenset({"caption", "status"})
CSV_COLUMNS = ("image", "caption", "captioner", "error", "status", "edited_by")  # old columns first


def status_of(caption: Caption | None) -> str:
    """The row's status; a worker that predates the column leaves failed rows "generated"."""
    if caption is None:
        return "pending"
    if caption.status == "generated" and caption.error is not None and caption.text is None:
        return "failed"
    return caption.status if caption.status in CAPTION_STATUSES else "generated"


def thumbnail_url(task_id: str, image_id: int) -> str:
    return f"/api/jobs/{task_id}/images/{image_id}/thumbnail"


def row(task_id: str, image: Image, caption: Caption | None) -> dict[str, Any]:
    """One caption row of the contract."""
    return {
        "image_id": image.id, "image": image.name,
        "caption": caption.text if caption else None,
        "captioner": caption.captioner if caption else None,
        "status": status_of(caption),
        "error": caption.error if caption else None,
        "edited_by": caption.edited_by if caption else None,
        "updated_at": caption.updated_at if caption else None,
        "thumbnail_url": thumbnail_url(task_id, image.id),
    }


def rows(db: Session, task_id: str, job_id: int) -> list[dict[str, Any]]:
    """Every image of the job in upload order, pending and failed ones included."""
    found = db.execute(
        select(Image, Caption).outerjoin(Caption, Caption.image_id == Image.id)
        .where(Image.job_id == job_id).order_by(Image.position)).all()
    return [row(task_id, image, caption) for image, caption in found]


def failed_images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``task_completed.results.failed_images`` out of caption rows."""
    return [{"image": r["image"], "error": r["error"]} for r in items if r["error"] is not None]


# -- edits -----------------------------------------------------------------------------------
def parse_edit(body: Any) -> tuple[str | None, bool]:
    """``(new text or None, approve)`` from a PATCH body, or ``invalid``.

    The text loses leading and trailing blanks and its ``\\r\\n`` become ``\\n``;
    it must then be 1..1500 characters with no control character but newline.
    """
    if not isinstance(body, dict):
        raise ApiError("invalid", "the body must be a JSON object")
    unknown = set(body) - EDIT_KEYS
    if unknown:
        raise ApiError("invalid", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    if not body:
        raise ApiError("invalid", 'send "caption" (text) and/or "status": "approved"')
    text = None
    if "caption" in body:
        text = clean_caption(body["caption"])
    approve = False
    if "status" in body:
        if body["status"] != "approved":
            raise ApiError("invalid", 'status can only be set to "approved"')
        approve = True
    return text, approve


def clean_caption(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError("invalid", "caption must be text")
    text = value.replace("\r\n", "\n").strip()
    if not text:
        raise ApiError("invalid", "a caption cannot be empty")
    if len(text) > MAX_CAPTION:
        raise ApiError("invalid", f"a caption is at most {MAX_CAPTION} characters (this one has {len(text)})")
    if any(ch != "\n" and unicodedata.category(ch) == "Cc" for ch in text):
        raise ApiError("invalid", "a caption cannot hold control characters (newlines are fine)")
    return text


def find_image(db: Session, job_id: int, image_id: str) -> tuple[Image, Caption | None]:
    """The job's image ``image_id`` and its caption, or ``not_found``."""
    if not image_id.isdigit() or len(image_id) > 18:
        raise ApiError("not_found", "no such image in this job")
    image = db.get(Image, int(image_id))
    if image is None or image.job_id != job_id:
        raise ApiError("not_found", "no such image in this job")
    return image, image.caption


def apply_edit(caption: Caption | None, text: str | None, approve: bool, editor: str) -> bool:
    """Change ``caption`` in place; True when anything changed. ``conflict`` while pending,
    and when approving a row that has no text (a failed image nobody captioned)."""
    if caption is None:
        raise ApiError("conflict", "this image is not captioned yet; edit it once it is")
    changed = False
    if text is not None and text != caption.text:
        if caption.generated is None and caption.edited_by is None:
            caption.generated = caption.text  # what the captioner said, kept
        caption.text = text
        caption.status = "edited"
        changed = True
    if approve:
        if caption.text is None:
            raise ApiError("conflict", "write a caption for this image before approving it")
        changed = changed or caption.status != "approved"
        caption.status = "approved"
    if changed:
        caption.edited_by = editor
        caption.updated_at = time.time()
    return changed


def approve_all(db: Session, job_id: int, editor: str) -> list[tuple[Image, Caption]]:
    """Every ``generated`` or ``edited`` row with text becomes ``approved``; the changed ones."""
    found = db.execute(
        select(Image, Caption).join(Caption, Caption.image_id == Image.id)
        .where(Image.job_id == job_id, Caption.status.in_(("generated", "edited")),
               Caption.text.is_not(None))
        .order_by(Image.position)).all()
    now = time.time()
    for _image, caption in found:
        caption.status = "approved"
        caption.edited_by = editor
        caption.updated_at = now
    return [(image, caption) for image, caption in found]


# -- CSV -------------------------------------------------------------------------------------
def to_csv(items: list[dict[str, Any]]) -> str:
    """The rows as CSV (newest text and status), spreadsheet formulas neutralised."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for r in items:
        writer.writerow([_csv_safe(r[c] or "") if c != "status" else r[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def _csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas in user-controlled cells (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
