"""Upload checks and storage: real images only, sizes capped, generated file names."""
from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

from settings import Settings
from web.errors import ApiError

# Pillow format -> stored file extension.
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp",
                   "BMP": "bmp", "TIFF": "tiff"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StoredImage:
    name: str   # display name from the upload (never used as a path)
    path: str   # where it is stored: UPLOAD_DIR/<uuid>.<ext>
    size: int


def display_name(raw: str | None, position: int) -> str:
    """The uploaded file's base name, cleaned for display (never a path)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()[:200]
    return name or f"image-{position + 1}"


def check_image(data: bytes, name: str) -> str:
    """The Pillow format of ``data`` if it decodes as an allowed image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, EOFError) as exc:
        raise ApiError("unsupported", f"{name} is not an image Skald can read") from exc
    if fmt not in ALLOWED_FORMATS:
        raise ApiError("unsupported", f"{name}: {fmt or 'unknown'} images are not supported "
                       f"(use {', '.join(sorted(ALLOWED_FORMATS))})")
    return fmt


def save_uploads(files: list[FileStorage], settings: Settings) -> list[StoredImage]:
    """Check every file, then store them all; nothing is stored if one is refused."""
    files = [f for f in files if f is not None and (f.filename or f.content_length)]
    if not files:
        raise ApiError("invalid", "send one or more image files in the multipart field 'images'")
    if len(files) > settings.max_images_per_job:
        raise ApiError("too_large", f"at most {settings.max_images_per_job} images in one job")
    checked: list[tuple[str, bytes, str]] = []
    for position, f in enumerate(files):
        name = display_name(f.filename, position)
        data = f.stream.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise ApiError("too_large", f"{name} is larger than "
                           f"{settings.max_image_bytes // (1024 * 1024)} MB")
        if not data:
            raise ApiError("invalid", f"{name} is empty")
        checked.append((name, data, check_image(data, name)))
    upload_dir = Path(settings.upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    stored: list[StoredImage] = []
    try:
        for name, data, fmt in checked:
            path = upload_dir / f"{uuid.uuid4().hex}.{ALLOWED_FORMATS[fmt]}"
            path.write_bytes(data)
            stored.append(StoredImage(name=name, path=str(path.resolve()), size=len(data)))
    except OSError:
        remove_stored(stored)
        raise
    return stored


def remove_stored(stored: list[StoredImage]) -> None:
    for item in stored:
        Path(item.path).unlink(missing_ok=True)
