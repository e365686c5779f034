"""Run the service: `python -m otbus_ingest_modbus` (or `otbus-ingest-modbus`)."""

import sys

from otbus_core.adapter import AdapterRuntime, main_adapter
from otbus_core.sources import SourceStore
from otbus_ingest_modbus.config import ModbusSettings, ModbusSource
from otbus_ingest_modbus.source import ModbusPoller


def build(settings: ModbusSettings) -> AdapterRuntime[ModbusSource]:
    store = SourceStore(ModbusSource, ["modbus"], settings.sources_file, settings.home)
    return AdapterRuntime(settings, store, ModbusPoller)


def main() -> int:
    return main_adapter("otbus-ingest-modbus", ModbusSettings, build, "otbus ingest-modbus")


if __name__ == "__main__":
    sys.exit(main())
