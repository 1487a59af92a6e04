"""Captions from a LLaVA-style model served by Ollama (``/api/generate``, streaming).

The stop check runs between streamed chunks, so a cancel stops a caption in
the middle. Timeouts: 5 s to connect, ``OLLAMA_TIMEOUT`` (default 120 s)
between chunks.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import requests

from tasks.captioners import CaptionCancelled, Captioned, CaptionerUnavailable, ImageUnreadable, StopCheck

PROMPT = ("Write one concise sentence of alt text for this image, for a reader "
          "who cannot see it. Describe only what is visible.")
CONNECT_TIMEOUT = 5.0


class OllamaCaptioner:
    name = "ollama"

    def __init__(self, url: str, model: str, timeout: float = 120.0,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.session = session or requests.Session()

    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        return Captioned(self.generate(path, should_stop), self.name, (self.name,))

    def generate(self, path: Path, should_stop: StopCheck) -> str:
        """The model's text for the image at ``path``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ImageUnreadable(f"cannot read image file: {exc}") from exc
        body = {"model": self.model, "prompt": PROMPT, "stream": True,
                "images": [base64.b64encode(data).decode("ascii")]}
        try:
            resp = self.session.post(f"{self.url}/api/generate", json=body, stream=True,
                                     timeout=(CONNECT_TIMEOUT, self.timeout))
        except requests.ConnectionError as exc:
            raise CaptionerUnavailable(
                f"Ollama is not reachable at {self.url} (is `ollama serve` running?)") from exc
        except requests.Timeout as exc:
            raise CaptionerUnavailable(f"Ollama at {self.url} did not answer in time") from exc
        with resp:
            if resp.status_code != 200:
                raise self._http_error(resp)
            return self._read_stream(resp, should_stop)

    def _http_error(self, resp: requests.Response) -> Exception:
        try:
            body = resp.json()
        except ValueError:
            body = None
        message = body.get("error", resp.text) if isinstance(body, dict) else resp.text[:200]
        if resp.status_code == 404:
            return CaptionerUnavailable(
                f"Ollama model {self.model!r} is not available: {message} "
                f"(run `ollama pull {self.model}`)")
        if resp.status_code in (400, 422):
            return ImageUnreadable(f"Ollama refused the image: {message}")
        return CaptionerUnavailable(f"Ollama answered {resp.status_code}: {message}")

    def _read_stream(self, resp: requests.Response, should_stop: StopCheck) -> str:
        parts: list[str] = []
        try:
            for line in resp.iter_lines():
                if should_stop():
                    raise CaptionCancelled("cancelled while streaming from Ollama")
                if not line:
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError as exc:
                    raise CaptionerUnavailable(f"Ollama sent a line that is not JSON: {line[:80]!r}") from exc
                if "error" in chunk:
                    raise ImageUnreadable(f"Ollama could not caption the image: {chunk['error']}")
                parts.append(chunk.get("response", ""))
                if chunk.get("done"):
                    break
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise CaptionerUnavailable(f"lost the stream from Ollama at {self.url}: {exc}") from exc
        text = "".join(parts).strip()
        if not text:
            raise ImageUnreadable("Ollama returned an empty caption")
        return text
