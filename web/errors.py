"""JSON errors of the contract: ``{"error": {"code", "message"}}`` with its status."""
from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

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
}
_BY_STATUS = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "invalid", 409: "conflict", 413: "too_large", 415: "unsupported",
              429: "rate_limited", 503: "unavailable"}


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


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return jsonify(err.body()), err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if not wants_json():
            return err
        status = err.code or 500
        code = _BY_STATUS.get(status, "invalid" if status < 500 else "unavailable")
        if status == 413:
            message = "request too large"
        else:
            message = err.description or err.name
        return jsonify({"error": {"code": code, "message": message}}), status
