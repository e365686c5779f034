"""Run the service: `python -m otbus_notify_bridge` (or `otbus-notify-bridge`)."""

import sys
from typing import Any

from otbus_core.service import main_http
from otbus_notify_bridge.app import create_app
from otbus_notify_bridge.config import NotifyBridgeSettings


def _server_options(settings: NotifyBridgeSettings) -> dict[str, Any]:
    return {
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_message_bytes,
        # compressing every frame once per client costs more CPU than anything else the bridge does
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 5,
    }


def main() -> int:
    return main_http("otbus-notify-bridge", NotifyBridgeSettings, create_app, _server_options)


if __name__ == "__main__":
    sys.exit(main())
