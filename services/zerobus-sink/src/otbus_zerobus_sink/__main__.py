"""Run the sink: `python -m otbus_zerobus_sink` (or `otbus-zerobus-sink`).

`python -m otbus_zerobus_sink ddl catalog.schema.table` prints the CREATE TABLE of a target.
"""

import sys

from otbus_core.service import main_http
from otbus_zerobus_sink.app import create_app
from otbus_zerobus_sink.config import TABLE_PATTERN, ZerobusSinkSettings
from otbus_zerobus_sink.rows import TagRow
from otbus_zerobus_sink.rowschema import ddl


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "ddl":
        if len(args) != 2 or not TABLE_PATTERN.match(args[1]):
            print("usage: otbus-zerobus-sink ddl catalog.schema.table", file=sys.stderr)  # noqa: T201
            return 2
        sys.stdout.write(ddl(args[1], TagRow.DESCRIPTOR))
        return 0
    return main_http("otbus-zerobus-sink", ZerobusSinkSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
