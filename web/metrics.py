"""Prometheus series of the web process (``skald_*``); labels stay low-cardinality."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

SOCKET_REJECTED = Counter("skald_socket_events_rejected_total",
                          "Socket.IO connections and events refused, by reason", ["reason"])
WATCHERS = Gauge("skald_watchers_connected", "Socket.IO clients connected to this web process")
