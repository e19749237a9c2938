"""Webhooks of ``pytest-runs serve --webhook URL``: ``run.queued`` and
``run.finished`` events, POSTed as JSON off the request path, signed with
HMAC-SHA256 and retried with backoff.

Deliveries wait in this process's memory: a server stopped with deliveries
pending waits up to a few seconds for them, then drops the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any

log = logging.getLogger("pytest_rerun_runs.server")

SIGNATURE_HEADER = "X-Runs-Signature"
ATTEMPTS = 5


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of the body, keyed by the webhook secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    """One delivery thread; ``send`` never blocks the request that calls it."""

    def __init__(
        self, url: str, secret: str | None, *, attempts: int = ATTEMPTS, backoff: float = 0.5
    ) -> None:
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.backoff = backoff
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def send(self, event: str, data: dict[str, Any]) -> None:
        delivery = str(uuid.uuid4())
        body = json.dumps(
            {"id": delivery, "event": event, "created_at": time.time(), "data": data}
        ).encode()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._deliver_all, name="pytest-runs-webhooks", daemon=True
                )
                self._thread.start()
        self._queue.put((event, body))

    def close(self, timeout: float) -> None:
        """Deliver what is pending for up to ``timeout`` seconds, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._stopping.set()

    def _deliver_all(self) -> None:
        import requests

        session = requests.Session()
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, body = item
            self._deliver(session, event, body)

    def _deliver(self, session: Any, event: str, body: bytes) -> None:
        import requests

        delivery = json.loads(body)["id"]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "pytest-rerun-runs",
            "X-Runs-Event": event,
            "X-Runs-Delivery": delivery,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        for attempt in range(self.attempts):
            try:
                response = session.post(self.url, data=body, headers=headers, timeout=(3, 10))
                if response.status_code < 300:
                    return
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    log.warning(
                        "webhook %s refused %s: HTTP %s", self.url, event, response.status_code
                    )
                    return
            except requests.RequestException as exc:
                log.warning("webhook %s: %s", self.url, exc)
            if self._stopping.wait(self.backoff * 2**attempt):
                return
        log.warning("webhook %s: gave up on %s %s", self.url, event, delivery)
