"""Upload checks and storage: real images only, bytes and pixels capped, generated file names.

The pixel caps (``MAX_IMAGE_PIXELS`` per image, ``MAX_JOB_PIXELS`` per job)
are checked from each file's header, before anything is decoded: a 46 KB
PNG of 13 000 x 13 000 pixels is refused here, not found out by a worker.
"""
from __future__ import annotations

import io
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from werkzeug.datastructures import FileStorage

from settings import Settings
from web.errors import ApiError
from web.offloop import off_loop

# Pillow format -> stored file extension.
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp",
                   "BMP": "bmp", "TIFF": "tiff"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StoredImage:
    name: str   # display name from the upload (never used as a path)
    path: str   # where it is stored: UPLOAD_DIR/<uuid>.<ext>
    size: int
    width: int | None = None   # as stored in the file (before any EXIF rotation)
    height: int | None = None


def display_name(raw: str | None, position: int) -> str:
    """The uploaded file's base name, cleaned for display (never a path)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()[:200]
    return name or f"image-{position + 1}"


@dataclass(frozen=True)
class CheckedImage:
    format: str
    width: int
    height: int


def check_image(data: bytes, name: str, max_pixels: int | None = None) -> CheckedImage:
    """The format and size of ``data`` if it is an allowed image of at most ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below decides
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ApiError("too_large", f"{name} has {width * height:,} pixels "
                                   f"({width}\u00d7{height}); at most {max_pixels:,} pixels per image")
                img.verify()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours
        raise ApiError("too_large", f"{name} has more than {max_pixels or Image.MAX_IMAGE_PIXELS:,} "
                       f"pixels; at most {max_pixels or Image.MAX_IMAGE_PIXELS:,} pixels per image") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a crafted file makes Pillow raise: not an image we read
        raise ApiError("unsupported", f"{name} is not an image Skald can read") from exc
    if fmt not in ALLOWED_FORMATS:
        raise ApiError("unsupported", f"{name}: {fmt or 'unknown'} images are not supported "
                       f"(use {', '.join(sorted(ALLOWED_FORMATS))})")
    return CheckedImage(fmt, width, height)


def save_uploads(files: list[FileStorage], settings: Settings) -> list[StoredImage]:
    """Check every file, then store them all; nothing is stored if one is refused."""
    files = [f for f in files if f is not None and (f.filename or f.content_length)]
    if not files:
        raise ApiError("invalid", "send one or more image files in the multipart field 'images'")
    if len(files) > settings.max_images_per_job:
        raise ApiError("too_large", f"at most {settings.max_images_per_job} images in one job")
    checked: list[tuple[str, bytes, CheckedImage]] = []
    job_pixels = 0
    for position, f in enumerate(files):
        name = display_name(f.filename, position)
        data = f.stream.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise ApiError("too_large", f"{name} is larger than "
                           f"{settings.max_image_bytes // (1024 * 1024)} MB")
        if not data:
            raise ApiError("invalid", f"{name} is empty")
        image = off_loop(check_image, data, name, settings.max_image_pixels)  # decodes: CPU
        job_pixels += image.width * image.height
        if job_pixels > settings.max_job_pixels:
            raise ApiError("too_large", f"the images of one job may have at most "
                           f"{settings.max_job_pixels:,} pixels together; {name} goes past that")
        checked.append((name, data, image))
    upload_dir = Path(settings.upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    stored: list[StoredImage] = []
    try:
        for name, data, image in checked:
            path = upload_dir / f"{uuid.uuid4().hex}.{ALLOWED_FORMATS[image.format]}"
            path.write_bytes(data)
            stored.append(StoredImage(name=name, path=str(path.resolve()), size=len(data),
                                      width=image.width, height=image.height))
    except OSError:
        remove_stored(stored)
        raise
    return stored


def remove_stored(stored: list[StoredImage]) -> None:
    for item in stored:
        Path(item.path).unlink(missing_ok=True)
