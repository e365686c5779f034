"""Run the service: `python -m otbus_ingest_http` (or `otbus-ingest-http`)."""

import sys

from otbus_core.service import main_http
from otbus_ingest_http.app import create_app
from otbus_ingest_http.config import IngestHttpSettings


def main() -> int:
    return main_http("otbus-ingest-http", IngestHttpSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
