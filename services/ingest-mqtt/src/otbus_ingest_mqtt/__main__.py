"""Run the service: `python -m otbus_ingest_mqtt` (or `otbus-ingest-mqtt`)."""

import sys

from otbus_core.adapter import AdapterRuntime, main_adapter
from otbus_core.sources import SourceStore
from otbus_ingest_mqtt.config import MqttSettings, MqttSource
from otbus_ingest_mqtt.source import MqttSubscriber


def build(settings: MqttSettings) -> AdapterRuntime[MqttSource]:
    store = SourceStore(MqttSource, ["mqtt"], settings.sources_file, settings.home)
    subscribers: dict[str, MqttSubscriber] = {}

    def subscriber(cfg: MqttSource) -> MqttSubscriber:
        sub = subscribers.get(cfg.name)
        if sub is None or sub.cfg != cfg:  # a source re-added with other settings starts afresh
            sub = subscribers[cfg.name] = MqttSubscriber(cfg, settings.home)
        return sub

    return AdapterRuntime(settings, store, subscriber)


def main() -> int:
    return main_adapter("otbus-ingest-mqtt", MqttSettings, build, "otbus ingest-mqtt")


if __name__ == "__main__":
    sys.exit(main())
