"""Run the service: `python -m otbus_event_store` (or `otbus-event-store`)."""

import sys

from otbus_core.service import main_http
from otbus_event_store.app import create_app
from otbus_event_store.config import EventStoreSettings


def main() -> int:
    return main_http("otbus-event-store", EventStoreSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
