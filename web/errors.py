"""JSON errors of the contract: ``{"error": {"code", "message"}}`` with its status.

A backing service that is away (Redis, the broker, the database) is ``503
unavailable`` wherever it surfaces, never a bare 500: one handler per kind of
error rather than a ``try`` in every view.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)
# Sent with every answer: no MIME sniffing of JSON or uploads, no framing of our
# pages (the cancel and maintenance buttons), no full URLs (watch tokens) in Referer.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "same-origin"}
UNAVAILABLE = {
    RedisError: "live state (Redis) is unavailable; try again shortly",
    KombuOperationalError: "the job queue is not reachable; try again shortly",
    DatabaseOperationalError: "the database is unavailable; try again shortly",
}

STATUS = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsupported": 415,
    "rate_limited": 429,
    "maintenance": 503,
    "unavailable": 503,
    "timeout": 504,     # a worker did not answer (web/control.py)
}
_BY_STATUS = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "invalid", 409: "conflict", 413: "too_large", 415: "unsupported",
              429: "rate_limited", 503: "unavailable",
              504: "timeout"}


class ApiError(Exception):
    """An error answered to the client; ``code`` is one of :data:`STATUS`."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def wants_json() -> bool:
    return (request.path.startswith("/api/") or request.path in ("/healthz", "/metrics")
            or request.accept_mimetypes.best == "application/json")


# What a person sees on an error page (the JSON answers keep the contract's codes).
PAGES = {
    403: ("Not allowed", "Your account may not open this page."),
    404: ("Not found", "There is no such page, or it belongs to someone else."),
    500: ("Something went wrong", "Skald could not answer this time. Try again in a moment."),
}


def error_page(status: int):
    """A Skald page with navigation for ``status`` (404, 403, 500 and their kin)."""
    kind = status if status in PAGES else (500 if status >= 500 else 404 if status == 405 else 403)
    title, text = PAGES[kind]
    try:
        return render_template("errors/error.html", status=status, title=title, text=text), status
    except Exception as exc:  # noqa: BLE001 - e.g. the database is away too: still answer
        log.warning("cannot render the error page: %s", exc)
        return f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{text}</p>", status


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        if err.status in (403, 404) and not wants_json():
            return error_page(err.status)
        return jsonify(err.body()), err.status

    def _unavailable(err: Exception):
        message = next(m for kind, m in UNAVAILABLE.items() if isinstance(err, kind))
        log.warning("%s %s: %s (%s)", request.method, request.path, message, err)
        if wants_json():
            return jsonify({"error": {"code": "unavailable", "message": message}}), 503
        return f"Skald is briefly unavailable: {message}.", 503, {"Content-Type": "text/plain; charset=utf-8",
                                                                  "Retry-After": "5"}

    for kind in UNAVAILABLE:
        app.register_error_handler(kind, _unavailable)

    @app.after_request
    def _security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if not wants_json():
            status = err.code or 500
            return error_page(status) if status in (403, 404, 405) or status >= 500 else err
        status = err.code or 500
        code = _BY_STATUS.get(status, "invalid" if status < 500 else "unavailable")
        if status == 413:
            message = "request too large"
        else:
            message = err.description or err.name
        return jsonify({"error": {"code": code, "message": message}}), status
