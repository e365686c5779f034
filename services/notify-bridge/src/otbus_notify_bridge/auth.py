"""Who a WebSocket client is: its tenant, from a static API token or a signed (JWT) token."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from otbus_core.auth import TokenMap
from otbus_core.exceptions import ConfigError, InvalidTenant
from otbus_core.topics import validate_tenant
from otbus_notify_bridge.config import NotifyBridgeSettings

__all__ = ["AuthError", "Authenticator", "Identity"]


class AuthError(Exception):
    """The token is missing, unknown, malformed or expired (the message says which)."""


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    expires_at: float | None
    """Unix time the token stops being valid (signed tokens), None for API tokens."""


class Authenticator:
    def __init__(self, tokens: TokenMap | None, jwt_secret: str | None) -> None:
        if tokens is None and not jwt_secret:
            raise ConfigError(
                "OTBUS_API_TOKENS: no token configured (set it, OTBUS_API_TOKENS_FILE or OTBUS_JWT_SECRET)"
            )
        if jwt_secret is not None and len(jwt_secret) < 32:
            raise ConfigError("OTBUS_JWT_SECRET: must be at least 32 characters")
        self.tokens = tokens
        self.jwt_secret = jwt_secret

    @classmethod
    def from_settings(cls, settings: NotifyBridgeSettings) -> Authenticator:
        try:
            secret = settings.jwt_secret_value()
        except OSError as e:
            raise ConfigError(f"OTBUS_JWT_SECRET_FILE: cannot read {settings.jwt_secret_file}: {e}") from None
        return cls(settings.token_map(), secret)

    def identify(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing token (give ?token= or an Authorization: Bearer header)")
        if self.tokens is not None:
            tenant = self.tokens.tenant_for(token)
            if tenant is not None:
                return Identity(tenant, None)
        if self.jwt_secret is not None and token.count(".") == 2:
            try:
                claims = jwt.decode(
                    token, self.jwt_secret, algorithms=["HS256"], options={"require": ["exp", "tenant"]}, leeway=5
                )
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired") from None
            except jwt.InvalidTokenError as e:
                raise AuthError(f"invalid token: {e}") from None
            tenant = claims["tenant"]
            try:
                validate_tenant(str(tenant))
            except InvalidTenant:
                raise AuthError("invalid token: its tenant claim is not a tenant id") from None
            return Identity(str(tenant), float(claims["exp"]))
        raise AuthError("invalid token")

    def sign(self, tenant: str, ttl_s: float) -> str:
        """A signed token for `tenant` valid for `ttl_s` seconds (tests, tools, the demo)."""
        if self.jwt_secret is None:
            raise RuntimeError("no JWT secret configured")
        return jwt.encode({"tenant": tenant, "exp": int(time.time() + ttl_s)}, self.jwt_secret, algorithm="HS256")
