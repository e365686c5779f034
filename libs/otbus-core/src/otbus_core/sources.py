"""Adapter sources: the YAML file of sources, secrets by reference, and run-time changes.

A sources file lists sources of any protocol (as in the seeds); each adapter takes the
ones of its protocols and validates them with its own model (a subclass of
`SourceConfig`), so an error names the source and the field. Sources added or removed
through the REST API are kept in `<state_dir>/sources-api.json` (added ones in full,
removed names of file sources), so they survive a restart without rewriting the
operator's file.

Secrets (passwords, keys) are given as `{env: NAME}` or `{file: /path}`, or in clear for
compatibility with existing files (a warning says so); they are resolved when the source
connects and never returned by the API or logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from otbus_core.exceptions import ConfigError
from otbus_core.topics import TENANT_PATTERN

__all__ = [
    "SecretRef",
    "SourceConfig",
    "SourceError",
    "SourceStore",
    "format_errors",
    "resolve_secret",
]

log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class SecretRef(BaseModel):
    """A secret kept out of the sources file: from an environment variable or a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str | None = None
    file: Path | None = None

    @field_validator("env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError("not an environment variable name")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self


Secret = str | SecretRef


def resolve_secret(secret: Secret | None, what: str) -> str | None:
    """The secret's value; ConfigError naming `what` when its reference cannot be read."""
    if secret is None or isinstance(secret, str):
        return secret
    if secret.env is not None:
        value = os.environ.get(secret.env)
        if value is None:
            raise ConfigError(f"{what}: environment variable {secret.env} is not set")
        return value
    try:
        return Path(secret.file or "").read_text().strip()
    except OSError as e:
        raise ConfigError(f"{what}: secret file {secret.file} cannot be read: {e.strerror}") from None


class SourceConfig(BaseModel):
    """What every source has; each adapter extends it with its protocol's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()  # fields the API never shows

    name: str = Field(pattern=_NAME)
    protocol: str
    endpoint: str
    enabled: bool = True
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    """The tenant the readings belong to (the adapter's tenant when not given)."""
    site: str | None = None
    area: str | None = None
    line: str | None = None
    equipment: str | None = None
    reconnect_initial_s: float = Field(1.0, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    def context(self) -> dict[str, str]:
        parts = {"site": self.site, "area": self.area, "line": self.line, "equipment": self.equipment}
        return {k: v for k, v in parts.items() if v}

    def public(self) -> dict[str, Any]:
        """The source as the API shows it: secrets replaced by what kind of secret they are."""
        doc = self.model_dump(mode="json", exclude_none=True)
        for f in type(self).SECRET_FIELDS:
            v = getattr(self, f, None)
            if v is not None:
                doc[f] = "***" if isinstance(v, str) else {k: w for k, w in doc[f].items() if w is not None}
        return doc

    def clear_secrets(self) -> list[str]:
        return [f for f in type(self).SECRET_FIELDS if isinstance(getattr(self, f, None), str)]


S = TypeVar("S", bound=SourceConfig)


class SourceError(ValueError):
    """A source that cannot be taken (invalid, duplicate, unknown); `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def format_errors(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}{'.' + loc if loc else ''}: {err['msg']}")
    return "; ".join(lines)


def _label(i: int, doc: Any) -> str:
    name = doc.get("name") if isinstance(doc, dict) else None
    return f"sources[{i}] ({name!r})" if name else f"sources[{i}]"


class SourceStore(Generic[S]):
    """The sources of one adapter: the file's, plus and minus the API's changes (persisted)."""

    def __init__(
        self,
        model: type[S],
        protocols: Iterable[str],
        sources_file: Path | None,
        state_dir: Path,
        key_name: str = "OTBUS_SOURCES_FILE",
    ) -> None:
        self.model = model
        self.protocols = frozenset(protocols)
        self.sources_file = sources_file
        self.state_path = state_dir / "sources-api.json"
        self._lock = threading.Lock()
        self._file: dict[str, S] = {}
        self._added: dict[str, S] = {}
        self._removed: set[str] = set()
        if sources_file is not None:
            self._file = self._load_file(sources_file, key_name)
        state_dir.mkdir(parents=True, exist_ok=True)
        self._load_state()

    def _load_file(self, path: Path, key_name: str) -> dict[str, S]:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{key_name}: {path} cannot be read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{key_name}: {path} is not valid YAML: {e}") from None
        items = doc.get("sources") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ConfigError(f"{key_name}: {path} must hold a list under 'sources'")
        out: dict[str, S] = {}
        errors = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append(f"{_label(i, item)}: must be a mapping")
                continue
            if item.get("protocol") not in self.protocols:
                if "protocol" not in item:
                    errors.append(f"{_label(i, item)}.protocol: missing")
                continue  # another adapter's source
            try:
                src = self.model.model_validate(item)
            except ValidationError as e:
                errors.append(format_errors(e, _label(i, item)))
                continue
            if src.name in out:
                errors.append(f"{_label(i, item)}.name: {src.name!r} is used by another source")
                continue
            for f in src.clear_secrets():
                log.warning("source %s: %s is given in clear in %s; use {env: NAME} or {file: PATH}", src.name, f, path)
            out[src.name] = src
        if errors:
            raise ConfigError(f"{key_name}: {path}: " + "; ".join(errors))
        return out

    def _load_state(self) -> None:
        if not self.state_path.exists():
            return
        try:
            doc = json.loads(self.state_path.read_text())
            self._removed = set(doc.get("removed", []))
            for item in doc.get("added", []):
                src = self.model.model_validate(item)
                self._added[src.name] = src
        except (OSError, ValueError, ValidationError) as e:
            raise ConfigError(f"sources state {self.state_path} cannot be read: {e}") from None

    def _save_state(self) -> None:
        doc = {
            "added": [s.model_dump(mode="json", exclude_none=True) for s in self._added.values()],
            "removed": sorted(self._removed),
        }
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # may hold secrets given in clear
        tmp.replace(self.state_path)

    def all(self) -> list[S]:
        with self._lock:
            merged = {n: s for n, s in self._file.items() if n not in self._removed}
            merged.update(self._added)
            return list(merged.values())

    def get(self, name: str) -> S | None:
        return next((s for s in self.all() if s.name == name), None)

    def add(self, doc: Any) -> S:
        if not isinstance(doc, dict):
            raise SourceError("body: must be a JSON object describing one source")
        if doc.get("protocol") not in self.protocols:
            raise SourceError(f"protocol: must be one of {sorted(self.protocols)} for this adapter")
        try:
            src = self.model.model_validate(doc)
        except ValidationError as e:
            raise SourceError(format_errors(e, "source")) from None
        with self._lock:
            live = (set(self._file) - self._removed) | set(self._added)
            if src.name in live:
                raise SourceError(f"name: a source {src.name!r} exists already", status=409)
            self._added[src.name] = src
            self._removed.discard(src.name)
            self._save_state()
        return src

    def remove(self, name: str) -> S:
        with self._lock:
            if name in self._added:
                src = self._added.pop(name)
            elif name in self._file and name not in self._removed:
                src = self._file[name]
                self._removed.add(name)
            else:
                raise SourceError(f"no source named {name!r}", status=404)
            self._save_state()
        return src

    def names(self) -> Sequence[str]:
        return [s.name for s in self.all()]
