"""API tokens: each token belongs to exactly one tenant."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import yaml

from otbus_core.exceptions import ConfigError, InvalidTenant
from otbus_core.topics import validate_tenant

__all__ = ["TokenMap"]


class TokenMap:
    """Maps tokens to tenants. A configured token may be given in clear or as
    `sha256:<hex>` so that config files need not hold the secret itself."""

    def __init__(self, tokens: Mapping[str, str], *, key_name: str = "OTBUS_API_KEYS") -> None:
        self._by_digest: dict[bytes, str] = {}
        for token, tenant in tokens.items():
            try:
                validate_tenant(tenant)
            except InvalidTenant as e:
                raise ConfigError(f"{key_name}: {e}") from None
            if token.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(token.removeprefix("sha256:"))
                except ValueError:
                    raise ConfigError(f"{key_name}: a 'sha256:' token of tenant {tenant!r} is not hex") from None
                if len(digest) != 32:
                    raise ConfigError(f"{key_name}: a 'sha256:' token of tenant {tenant!r} is not 64 hex digits")
            else:
                if len(token) < 16:
                    raise ConfigError(f"{key_name}: a token of tenant {tenant!r} is shorter than 16 characters")
                digest = hashlib.sha256(token.encode()).digest()
            self._by_digest[digest] = tenant

    @classmethod
    def load(cls, tokens: Mapping[str, str], path: Path | None, key_name: str) -> TokenMap:
        """Tokens from settings merged with a YAML/JSON file of `token: tenant` lines."""
        merged = dict(tokens)
        if path is not None:
            try:
                doc = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"{key_name}_FILE: cannot read {path}: {e}") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"{key_name}_FILE: must map tokens to tenants")
            merged.update({str(k): str(v) for k, v in doc.items()})
        if not merged:
            raise ConfigError(f"{key_name}: no token configured (set it or {key_name}_FILE)")
        return cls(merged, key_name=key_name)

    @property
    def tenants(self) -> set[str]:
        return set(self._by_digest.values())

    def tenant_for(self, token: str | None) -> str | None:
        if not token:
            return None
        # Looking up a SHA-256 digest leaks nothing useful about the token through timing.
        return self._by_digest.get(hashlib.sha256(token.encode()).digest())

    @staticmethod
    def from_request_parts(authorization: str | None, api_key: str | None, query_key: str | None) -> str | None:
        """The token from `Authorization: Bearer`, `X-API-Key` or `?api_key=`, in that order."""
        if authorization and authorization[:7].lower() == "bearer ":
            return authorization[7:].strip()
        return api_key or query_key
