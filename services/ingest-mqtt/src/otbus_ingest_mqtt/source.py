"""One MQTT broker connection (paho-mqtt 2): subscribe, decode, publish readings; QoS 1/2
messages are acknowledged to the broker only once their readings are in the spool."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from otbus_core.adapter import SourceContext
from otbus_core.sources import resolve_secret
from otbus_ingest_mqtt.config import MqttSource
from otbus_ingest_mqtt.decode import JsonDecoder, Rejected, SparkplugDecoder, ValueDecoder, rebirth_command

__all__ = ["MqttSubscriber"]


class MqttSubscriber:
    """Made once per source: the Sparkplug state (alias tables, seq) outlives reconnects, since a
    persistent session delivers what was sent meanwhile."""

    def __init__(self, cfg: MqttSource, state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.client: mqtt.Client | None = None
        self.decoder = self._decoder()

    def _client(self) -> mqtt.Client:
        c = self.cfg
        v5 = c.mqtt_version == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id or f"otbus-{c.name}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else c.clean_start,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        if c.username is not None:
            client.username_pw_set(c.username, resolve_secret(c.password, f"source {c.name}: password"))
        if c.tls_enabled:
            t = c.tls
            client.tls_set(
                ca_certs=t.ca_file if t else None,
                certfile=t.cert_file if t else None,
                keyfile=t.key_file if t else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if t is not None and t.insecure:
                client.tls_insecure_set(True)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        return client

    async def run(self, ctx: SourceContext[MqttSource]) -> None:
        c = self.cfg
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        lost: asyncio.Future[None] = loop.create_future()
        client = self.client = self._client()
        decoder = self.decoder
        protocol = "sparkplug" if isinstance(decoder, SparkplugDecoder) else "mqtt"
        subs: list[tuple[str, int]] = [(s.topic, s.qos if s.qos is not None else c.qos) for s in c.subscriptions]
        lock = threading.Lock()  # paho's network thread and ours

        def settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

        def on_connect(cl: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                loop.call_soon_threadsafe(settle, ready, ConnectionError(f"broker refused the connection: {rc}"))
                return
            cl.subscribe(subs)  # also with a kept session: renewing the subscriptions is harmless

        def on_subscribe(_cl: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
            refused = [str(rc) for rc in codes if rc.is_failure]
            if refused:
                err = ConnectionError(f"subscription refused: {', '.join(refused)}")
                loop.call_soon_threadsafe(settle, ready, err)
                return
            loop.call_soon_threadsafe(settle, ready, None)

        def on_disconnect(_cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            err = ConnectionError(f"disconnected from {c.endpoint}: {rc}")
            loop.call_soon_threadsafe(settle, ready, err)
            loop.call_soon_threadsafe(settle, lost, err)

        def on_message(cl: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            ack = _acker(cl, msg, lock) if msg.qos > 0 else None
            try:
                readings = decoder(msg.topic, msg.payload)
            except Rejected as e:
                ctx.dead_letter(bytes(msg.payload), f"topic {msg.topic}: {e.reason}", e.error_type, f"mqtt:{msg.topic}")
                ctx.emit((), protocol, ack)  # acknowledged once the dead letter is spooled too
                return
            ctx.emit(readings, protocol, ack)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        props = None
        if c.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0 if c.clean_start else c.session_expiry_s
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    client.connect,
                    c.host,
                    c.tcp_port,
                    c.keepalive_s,
                    clean_start=c.clean_start if c.mqtt_version == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=props,
                ),
                c.connect_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise ConnectionError(f"cannot connect to {c.endpoint}: {e}") from None
        client.loop_start()
        try:
            await asyncio.wait_for(ready, c.connect_timeout_s)
            ctx.connected()
            await lost
        finally:
            client.on_disconnect = None
            client.disconnect()
            client.loop_stop()
            if isinstance(decoder, SparkplugDecoder):
                decoder.flush()  # the BIRTH tables a timer would have written

    def _decoder(self) -> Any:
        kind = self.cfg.effective_decoder
        if kind == "sparkplug":

            def rebirth(group: str, edge: str) -> None:
                if self.cfg.sparkplug_rebirth and self.client is not None:
                    self.client.publish(f"spBv1.0/{group}/NCMD/{edge}", rebirth_command(), qos=0)

            state = self.state_dir / "sparkplug" / f"{self.cfg.name}.json" if self.state_dir is not None else None
            return SparkplugDecoder(rebirth, state_path=state)
        if kind == "value":
            return ValueDecoder()
        return JsonDecoder(self.cfg.json_mapping)


def _acker(client: mqtt.Client, msg: mqtt.MQTTMessage, lock: threading.Lock) -> Any:
    mid, qos = msg.mid, msg.qos

    def ack() -> None:
        with lock:
            client.ack(mid, qos)

    return ack
