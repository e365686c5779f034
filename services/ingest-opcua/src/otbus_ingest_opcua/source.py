"""One OPC-UA server connection (asyncua): resolve and browse nodes, then subscribe or poll.

Status codes and source timestamps are carried through. When the connection is lost every
variable is published once with BadNoCommunication, then the adapter reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.crypto import security_policies as sp
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from otbus_core.adapter import SourceContext, checkpoint
from otbus_core.envelope import now_micros
from otbus_core.exceptions import ConfigError
from otbus_core.publisher import Reading
from otbus_core.sources import resolve_secret
from otbus_ingest_opcua.config import OpcUaSource

__all__ = ["BAD_NO_COMMUNICATION", "OpcUaReader", "UntrustedServer"]

log = logging.getLogger(__name__)

BAD_NO_COMMUNICATION = 0x80310000
_POLICIES: dict[str, Any] = {
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
}
_POLICY_URIS = {
    "Basic256Sha256": "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
    "Aes128Sha256RsaOaep": "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep",
    "Aes256Sha256RsaPss": "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss",
}
_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
_LOST = (OSError, TimeoutError, ConnectionError, UaError, asyncio.IncompleteReadError)


class UntrustedServer(ConnectionError):
    """The server's certificate is not the one trusted for this source."""


def _us(t: datetime | None) -> int | None:
    if t is None:
        return None
    return int(t.timestamp() * 1_000_000)


def _value(v: Any) -> bool | int | float | str | None:
    if v is None or isinstance(v, bool | float | str):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else float(v)
    if isinstance(v, ua.LocalizedText):
        return v.Text
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


class _Point:
    __slots__ = ("node", "tag")

    def __init__(self, node: Node, tag: str) -> None:
        self.node, self.tag = node, tag


_CERT_LOCK = asyncio.Lock()


async def _make_client_certificate(key: Path, cert: Path, uri: str) -> None:
    """Key and certificate made side by side, then moved into place, the certificate last:
    its presence means the pair is complete, also after a crash half way."""
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=key.parent, prefix=".new-"))
    try:
        await setup_self_signed_certificate(
            tmp / key.name,
            tmp / cert.name,
            uri,
            socket.gethostname(),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": "otbus ingest-opcua", "organizationName": "otbus"},
        )
        os.replace(tmp / key.name, key)
        os.replace(tmp / cert.name, cert)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_pair(key: Path, cert: Path) -> None:
    """The client key and certificate belong together (else every server refuses the channel)."""
    try:
        public = x509.load_der_x509_certificate(cert.read_bytes()).public_key()
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"client certificate {cert} or key {key} cannot be read: {e}") from None
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public.public_bytes(*fmt) != private.public_key().public_bytes(*fmt):
        raise ConfigError(f"client key {key} does not belong to the certificate {cert}; delete both to make a new pair")


class OpcUaReader:
    def __init__(self, cfg: OpcUaSource, home: Path) -> None:
        self.cfg = cfg
        self.home = home
        self.points: list[_Point] = []

    # -- connection -------------------------------------------------------------------

    async def _client(self, ctx: SourceContext[OpcUaSource]) -> Client:
        c = self.cfg
        client = Client(c.endpoint, timeout=c.timeout_s, watchdog_intervall=c.watchdog_s)
        if c.username is not None:
            client.set_user(c.username)
            password = resolve_secret(c.password, f"source {c.name}: password")
            if password is not None:
                client.set_password(password)
        if c.security_mode != "None":
            await self._secure(client, ctx)
        return client

    async def _secure(self, client: Client, ctx: SourceContext[OpcUaSource]) -> None:
        c = self.cfg
        pki = self.home / "pki"
        cert, key = pki / "client_cert.der", pki / "client_key.pem"
        uri = f"urn:otbus:ingest-opcua:{socket.gethostname()}"
        async with _CERT_LOCK:  # every secure source of this adapter shares the one client certificate
            if not cert.exists():  # made on first start
                await _make_client_certificate(key, cert, uri)
                log.info("made the client certificate %s (give it to the servers' administrators to trust)", cert)
            _check_pair(key, cert)
        client.application_uri = uri
        probe = Client(c.endpoint, timeout=c.timeout_s)
        endpoints = await probe.connect_and_get_server_endpoints()
        want_mode, want_uri = _MODES[c.security_mode], _POLICY_URIS[c.security_policy]
        match = [e for e in endpoints if e.SecurityMode == want_mode and e.SecurityPolicyUri == want_uri]
        if not match:
            offered = sorted(
                {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}" for e in endpoints}
            )
            raise ConnectionError(f"the server offers no {c.security_policy}/{c.security_mode} endpoint ({offered})")
        der = match[0].ServerCertificate
        self._check_trust(der)
        await client.set_security(
            _POLICIES[c.security_policy], str(cert), str(key), server_certificate=der, mode=want_mode
        )

    def _check_trust(self, der: bytes) -> None:
        c = self.cfg
        got = hashlib.sha256(der).hexdigest()
        pinned = c.pinned_sha256
        if pinned is not None:
            if got != pinned:
                raise UntrustedServer(f"server certificate sha256 {got} is not the pinned {pinned}")
            return
        trusted = self.home / "pki" / "trusted" / f"{c.name}.sha256"
        if trusted.exists():
            known = trusted.read_text().strip()
            if got != known:
                raise UntrustedServer(
                    f"server certificate changed: sha256 {got}, trusted {known} (delete {trusted} to trust the new one)"
                )
            return
        trusted.parent.mkdir(parents=True, exist_ok=True)
        trusted.write_text(got + "\n")
        log.warning("source %s: trusting the server certificate sha256 %s on first use", c.name, got)

    async def run(self, ctx: SourceContext[OpcUaSource]) -> None:
        c = self.cfg
        client = await self._client(ctx)
        try:
            await client.connect()
        except _LOST as e:
            with suppress(Exception):
                await client.disconnect()
            raise ConnectionError(f"cannot connect to {c.endpoint}: {type(e).__name__}: {e}") from None
        try:
            await checkpoint()  # connect() waits through wait_for, which can lose a cancellation
            ctx.connected()
            self.points = await self._resolve(client, ctx)
            if not self.points:
                raise ConnectionError("none of the configured nodes could be found")
            if c.polling_mode:
                await self._poll(client, ctx)
            else:
                await self._subscribe(client, ctx)
        except _LOST as e:
            t = now_micros()
            why = f"connection lost: {type(e).__name__}: {e}"
            if not ctx.stopping:  # (a stop that ended the session is no outage of the server)
                bad = [Reading(p.tag, None, t, BAD_NO_COMMUNICATION, "", "", "", {"error": why}) for p in self.points]
                ctx.emit(bad)
            raise ConnectionError(why) from None
        finally:
            with suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)

    # -- nodes --------------------------------------------------------------------------

    async def _resolve(self, client: Client, ctx: SourceContext[OpcUaSource]) -> list[_Point]:
        c = self.cfg
        points: dict[str, _Point] = {}
        for ref in c.nodes:
            try:
                node, path = await _find(client, ref)
                if await node.read_node_class() != ua.NodeClass.Variable:
                    ctx.error(f"node {ref}: not a variable")
                    continue
            except (UaError, LookupError) as e:
                ctx.error(f"node {ref}: {e}")
                continue
            points.setdefault(node.nodeid.to_string(), _Point(node, path))
        for ref in c.browse_roots:
            try:
                root, path = await _find(client, ref)
            except (UaError, LookupError) as e:
                ctx.error(f"browse root {ref}: {e}")
                continue
            await self._browse(client, root, path, points)
        if len(points) > c.variable_limit:
            log.warning(
                "source %s: %d variables found, reading the first %d (variable_limit)",
                c.name,
                len(points),
                c.variable_limit,
            )
        chosen = list(points.values())[: c.variable_limit]
        log.info("source %s: reading %d variables", c.name, len(chosen))
        return chosen

    async def _browse(self, client: Client, root: Node, path: str, points: dict[str, _Point]) -> None:
        stack = [(root, path)]
        seen = {root.nodeid.to_string()}
        while stack and len(points) <= self.cfg.variable_limit:
            node, base = stack.pop(0)
            for ref in await node.get_children_descriptions():
                key = ref.NodeId.to_string()
                if key in seen:
                    continue
                seen.add(key)
                child = client.get_node(ref.NodeId)
                name = f"{base}/{ref.BrowseName.Name}" if base else ref.BrowseName.Name
                if ref.NodeClass == ua.NodeClass.Variable:
                    points.setdefault(key, _Point(child, name))
                elif ref.NodeClass == ua.NodeClass.Object:
                    stack.append((child, name))

    # -- reading ------------------------------------------------------------------------

    async def _subscribe(self, client: Client, ctx: SourceContext[OpcUaSource]) -> None:
        c = self.cfg
        by_node = {p.node.nodeid: p.tag for p in self.points}

        class Handler:
            def datachange_notification(self, node: Node, _val: Any, data: Any) -> None:
                dv = data.monitored_item.Value
                ctx.emit([_reading(by_node.get(node.nodeid, node.nodeid.to_string()), dv)])

            def status_change_notification(self, status: Any) -> None:
                ctx.error(f"subscription status: {status}")

        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=c.publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=max(3, int(10_000 / c.publishing_interval_ms)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        sub = await client.create_subscription(params, Handler())
        nodes = [p.node for p in self.points]
        for chunk in _chunks(nodes, 1000):
            if c.deadband is not None:
                kind = 1 if c.deadband.type == "absolute" else 2
                results = await sub.deadband_monitor(
                    list(chunk), ua.Double(c.deadband.value), ua.UInt32(kind), c.queue_size
                )
            else:
                results = await sub.subscribe_data_change(
                    list(chunk), queuesize=c.queue_size, sampling_interval=ua.Double(c.sampling_interval_ms)
                )
            bad = [r for r in (results if isinstance(results, list) else [results]) if isinstance(r, ua.StatusCode)]
            if bad:
                ctx.error(f"{len(bad)} monitored items refused: {bad[0]}")
        while True:  # the watchdog: a lost connection ends the subscription
            await checkpoint()  # asyncua awaits through wait_for, which can lose a cancellation
            await asyncio.sleep(c.watchdog_s)
            await client.check_connection()

    async def _poll(self, client: Client, ctx: SourceContext[OpcUaSource]) -> None:
        c = self.cfg
        loop = asyncio.get_running_loop()
        interval = c.polling_interval_ms / 1000
        next_at = loop.time()
        while True:
            readings: list[Reading] = []
            for chunk in _chunks(self.points, 1000):
                values = await client.read_attributes([p.node for p in chunk], ua.AttributeIds.Value)
                readings += [_reading(p.tag, dv) for p, dv in zip(chunk, values, strict=True)]
            ctx.emit(readings)
            await checkpoint()
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)


def _reading(tag: str, dv: Any) -> Reading:
    variant = dv.Value
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    value = _value(variant.Value) if variant is not None else None
    declared = variant.VariantType.name if variant is not None and variant.VariantType is not None else ""
    t = _us(dv.SourceTimestamp) or _us(dv.ServerTimestamp)
    return Reading(tag, value, t, status, "", declared)


async def _find(client: Client, ref: str) -> tuple[Node, str]:
    """A node from a node id or a browse path, and its tag (browse names under Objects, by '/')."""
    if ref.startswith(("ns=", "i=", "s=", "g=", "b=")):
        node = client.get_node(ref)
        path = await node.get_path(as_string=True)
        names = [str(p).split(":", 1)[-1] for p in path]
        names = [n for n in names if n not in ("Root", "Objects")]
        return node, "/".join(names) or ref
    parts = [p for p in ref.strip("/").split("/") if p]
    if parts and parts[0].split(":", 1)[-1] == "Objects":
        parts = parts[1:]
    node = client.nodes.objects
    names = []
    for part in parts:
        ns, _, name = part.rpartition(":")
        found = None
        for d in await node.get_children_descriptions():
            if d.BrowseName.Name == name and (not ns or d.BrowseName.NamespaceIndex == int(ns)):
                found = client.get_node(d.NodeId)
                break
        if found is None:
            raise LookupError(f"no {part!r} under {'/'.join(names) or 'Objects'}")
        node = found
        names.append(name)
    return node, "/".join(names)


def _chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]
