"""An OPC-UA server (asyncua) with plant signals in an ISA-95 folder tree.

Address space, namespace `urn:otbus:simulator` (index 2 on a fresh server):

    Objects/Plant1/Area<a>/Line<l>/Machine<m>/<Signal>_<i>   ramp (Int32), sine and random (Double), step (Boolean)
    Objects/Plant1/Static/Int16Value      Int16   -1234
    Objects/Plant1/Static/UInt32Value     UInt32  3000000000
    Objects/Plant1/Static/DoubleValue     Double  3.5
    Objects/Plant1/Static/BoolValue       Boolean true
    Objects/Plant1/Static/StringValue     String  "OTBUS-SIM"
    Objects/Plant1/Static/BadValue        Double  0.0 with status BadDeviceFailure (0x808B0000)
    Objects/Plant1/Static/UncertainValue  Double  1.25 with status UncertainLastUsableValue (0x40900000)
    Objects/Plant1/Static/Counter         UInt32  +1 on every update

Values change every `--interval` seconds, each with its source timestamp. Security: `--security`
none (default), sign, encrypt or all (Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss);
the server's certificate is made on first start under `--pki`. `--user name:password` requires
that user (anonymous is refused then).
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from otbus_ot_simulator.signals import Signal, plant

__all__ = ["NAMESPACE", "STATIC", "serve_opcua"]

NAMESPACE = "urn:otbus:simulator"
STATIC: dict[str, tuple[Any, ua.VariantType, int]] = {
    "Int16Value": (-1234, ua.VariantType.Int16, 0),
    "UInt32Value": (3_000_000_000, ua.VariantType.UInt32, 0),
    "DoubleValue": (3.5, ua.VariantType.Double, 0),
    "BoolValue": (True, ua.VariantType.Boolean, 0),
    "StringValue": ("OTBUS-SIM", ua.VariantType.String, 0),
    "BadValue": (0.0, ua.VariantType.Double, 0x808B0000),
    "UncertainValue": (1.25, ua.VariantType.Double, 0x40900000),
}

_POLICIES = {
    "none": [ua.SecurityPolicyType.NoSecurity],
    "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign],
    "encrypt": [
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ],
}
_POLICIES["all"] = _POLICIES["none"] + _POLICIES["sign"] + _POLICIES["encrypt"]


class _OneUser(UserManager):
    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def get_user(self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None) -> Any:
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


def _variant(kind: str) -> ua.VariantType:
    return {"ramp": ua.VariantType.Int32, "step": ua.VariantType.Boolean}.get(kind, ua.VariantType.Double)


async def serve_opcua(
    host: str,
    port: int,
    tags: int,
    interval: float,
    security: str = "none",
    pki: Path | None = None,
    user: str | None = None,
) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{host}:{port}/otbus/simulator")
    server.set_server_name("otbus OT simulator")
    if security not in _POLICIES:
        raise SystemExit(f"--security must be one of {sorted(_POLICIES)}")
    server.set_security_policy(_POLICIES[security])
    if security != "none":
        pki = pki or Path(".otbus/simulator-pki")
        pki.mkdir(parents=True, exist_ok=True)
        cert, key = pki / "server_cert.der", pki / "server_key.pem"
        if not cert.exists():
            await setup_self_signed_certificate(
                key,
                cert,
                "urn:otbus:simulator",
                socket.gethostname(),
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": "otbus OT simulator"},
            )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        await server.set_application_uri("urn:otbus:simulator")
    if user:
        name, _, password = user.partition(":")
        server.iserver.set_user_manager(_OneUser(name, password))
        server.set_security_IDs(["Username"])
    idx = await server.register_namespace(NAMESPACE)
    plant_folder = await server.nodes.objects.add_folder(idx, "Plant1")
    folders: dict[str, Any] = {}
    signals = plant(tags)
    variables: list[tuple[Signal, Any, ua.VariantType]] = []
    for s in signals:
        *dirs, name = s.path.split("/")
        parent = plant_folder
        path = ""
        for d in dirs:
            path = f"{path}/{d}"
            if path not in folders:
                folders[path] = await parent.add_folder(idx, d)
            parent = folders[path]
        vt = _variant(s.kind)
        var = await parent.add_variable(idx, name, ua.Variant(_initial(vt), vt))
        variables.append((s, var, vt))
    static = await plant_folder.add_folder(idx, "Static")
    for name, (value, vt, status) in STATIC.items():
        var = await static.add_variable(idx, name, ua.Variant(value, vt))
        if status:
            await var.write_value(ua.DataValue(ua.Variant(value, vt), StatusCode=ua.StatusCode(ua.UInt32(status))))
    counter = await static.add_variable(idx, "Counter", ua.Variant(0, ua.VariantType.UInt32))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rng = random.Random(11)
    async with server:
        print(  # noqa: T201
            f"simulator: OPC-UA on opc.tcp://{host}:{port}/otbus/simulator, {tags} signals every {interval}s, "
            f"security {security}",
            flush=True,
        )
        n = 0
        while not stop.is_set():
            t = time.time()
            now: Any = datetime.now(UTC)  # ua.DateTime is datetime
            for s, var, vt in variables:
                v = s.sample(t, rng)
                await var.write_value(
                    ua.DataValue(ua.Variant(_cast(v, vt), vt), SourceTimestamp=now, ServerTimestamp=now)
                )
            n += 1
            await counter.write_value(
                ua.DataValue(ua.Variant(n, ua.VariantType.UInt32), SourceTimestamp=now, ServerTimestamp=now)
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.time() - t)))


def _initial(vt: ua.VariantType) -> Any:
    return {ua.VariantType.Boolean: False, ua.VariantType.Int32: 0}.get(vt, 0.0)


def _cast(v: Any, vt: ua.VariantType) -> Any:
    if vt is ua.VariantType.Boolean:
        return bool(v)
    if vt is ua.VariantType.Int32:
        return int(v)
    return float(v)
