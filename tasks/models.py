"""Database models: users, jobs, images, captions and the audit log (SQLAlchemy 2).

The schema is created and upgraded by Alembic (``migrations/``, run by
``tasks/db.py``); a change here needs a migration beside it.
"""
from __future__ import annotations

import time

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Roles (PROTOCOL.md, "Roles"): a viewer reads what an admin reads and acts on nothing.
ROLES = ("user", "viewer", "admin")
# Caption statuses (PROTOCOL.md, "Reviewing captions"); "pending" is an image with no row yet.
CAPTION_STATUSES = ("pending", "generated", "edited", "approved", "failed")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # sha256 of the API token: tokens are 256-bit random, so a fast hash is
    # enough and allows an indexed lookup.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    # Bumped whenever credentials change (token revoked or rotated, role changed, logout
    # everywhere): every session and connection made before then stops working.
    auth_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)

    jobs: Mapped[list[Job]] = relationship(back_populates="owner")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class AuthSession(Base):
    """One browser login. The cookie carries its id; every request checks that the row still
    exists and that its epoch is the user's, so logging out (the row is deleted) or a bump of
    the user's ``auth_epoch`` ends it, even for a copied cookie. Stored as a SHA-256 hash."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # the user's auth_epoch at login
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    current_step: Mapped[str] = mapped_column(String(255), default="queued")
    queue: Mapped[str] = mapped_column(String(200), default="celery")  # where it was sent
    retry_of: Mapped[str | None] = mapped_column(String(36), nullable=True)  # task id it resumes
    resubmitted: Mapped[int] = mapped_column(Integer, default=0)  # times sent again by the sweeper
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)

    owner: Mapped[User] = relationship(back_populates="jobs")
    images: Mapped[list[Image]] = relationship(
        back_populates="job", order_by="Image.position", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))  # the uploaded file name, for display only
    path: Mapped[str] = mapped_column(String(1024))  # generated name under UPLOAD_DIR
    size: Mapped[int] = mapped_column(Integer, default=0)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    thumbnail: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # cached file

    job: Mapped[Job] = relationship(back_populates="images")
    caption: Mapped[Caption | None] = relationship(back_populates="image", uselist=False,
                                                     cascade="all, delete-orphan")


class Caption(Base):
    __tablename__ = "captions"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    captioner: Mapped[str] = mapped_column(String(32))
    stages: Mapped[str | None] = mapped_column(String(255), nullable=True)  # "ocr,objects,..."
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # set when the image failed
    status: Mapped[str] = mapped_column(String(16), default="generated")
    generated: Mapped[str | None] = mapped_column(Text, nullable=True)  # the captioner's text
    edited_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)

    image: Mapped[Image] = relationship(back_populates="caption")


class AuditEntry(Base):
    """One operator action (PROTOCOL.md, ``GET /api/audit``); pruned to a bounded count."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    result: Mapped[str] = mapped_column(Text, default="")
