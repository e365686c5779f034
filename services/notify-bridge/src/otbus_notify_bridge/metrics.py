"""The bridge's Prometheus metrics. Labels take fixed values only (never a tenant or a subject)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CLIENTS",
    "EVENTS_RELAYED",
    "FEED_ERRORS",
    "FRAMES_SENT",
    "LISTENER_CONNECTED",
    "LISTENER_RECONNECTS",
    "NOTIFICATIONS",
    "NOTIFY_TO_WS",
    "REPLAYED",
    "SLOW_CLOSES",
    "SOURCE_TO_WS",
]

_LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)

CLIENTS = Gauge("otbus_bridge_clients", "WebSocket clients connected")
EVENTS_RELAYED = Counter("otbus_bridge_events_relayed_total", "Events sent to clients (one per event and client)")
FRAMES_SENT = Counter("otbus_bridge_frames_sent_total", "Event frames sent to clients")
FRAMES_DIRECT = Counter(
    "otbus_bridge_frames_direct_total",
    "Event frames written straight to an idle client's connection (the rest went through its queue)",
)
REPLAYED = Counter("otbus_bridge_replayed_events_total", "Events sent to resuming clients from the store")
NOTIFICATIONS = Counter("otbus_bridge_notifications_total", "Notifications received", ["outcome"])
NOTIFY_TO_WS = Histogram(
    "otbus_bridge_notify_to_ws_seconds",
    "From a notification's arrival to the frame holding its event being sent (one sample per frame: its oldest event)",
    buckets=_LATENCY_BUCKETS,
)
SOURCE_TO_WS = Histogram(
    "otbus_bridge_source_to_ws_seconds",
    "From an event's source time to the frame holding it being sent (one sample per frame: its oldest event)",
    buckets=_LATENCY_BUCKETS,
)
LISTENER_RECONNECTS = Counter("otbus_bridge_listener_reconnects_total", "Times the listener connection was replaced")
LISTENER_CONNECTED = Gauge("otbus_bridge_listener_connected", "1 while the listener connection is up")
SLOW_CLOSES = Counter("otbus_bridge_slow_client_closes_total", "Clients closed because their queue overflowed")
FEED_ERRORS = Counter("otbus_bridge_feed_read_errors_total", "Failed reads of the feed from the store")
