"""Organizations, API keys and the admin credential. Secrets are shown once and stored as sha256 only."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from storage.db import Database
from storage.errors import AuthenticationFailed, InvalidRequest, NotFound
from storage.ids import new_id, now, random_token
from storage.settings import ORG_LIMIT_FIELDS, LimitSettings
from storage.tables import AdminCredential, ApiKey, Organization, OrganizationLimits

KEY_PREFIX = "sk-tg-"
ADMIN_PREFIX = "sk-tgadmin-"
_KEY_BY_HASH = select(col(ApiKey.organization_id), col(ApiKey.id), col(ApiKey.revoked_at))


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the organization every tenant query filters on, and the key used."""

    organization_id: str
    key_id: str


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown once, never stored


class KeyCache:
    """API keys verified in the last ``ttl_s`` seconds, by the sha256 of their secret: what spares a /v1 request the
    database round trip (and the thread hop to make it). Only valid keys are kept — an unknown or revoked key asks
    the database each time — and at most ``max_entries`` (expired ones go first, then the oldest).

    Revocation: a key revoked through this process's ``Accounts`` is dropped at once, and a verification that was
    in flight meanwhile does not put it back (``generation``). A revocation by another process on this host (the
    CLI, another ``serve --workers`` process) appends a byte to ``revocations`` (``<data_dir>/key-revocations``),
    whose size every lookup stats (~1 µs): a change empties the cache, so those act at once too. A key revoked on
    another host is refused here at most ``ttl_s`` after. ``ttl_s = 0``: nothing is kept.

    A database outage empties it (``clear``: the gateway's error translator on any transient database error, and
    ``gateway.auth.watch_database`` within a second when no request touched the database), so a cached key does
    not turn the outage's 503 into answers made without the database."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000, revocations: Path | None = None) -> None:
        self.ttl_s, self.max_entries, self.revocations = ttl_s, max_entries, revocations
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()  # puts come from worker threads, lookups from the event loop
        self.generation = 0  # bumped by every forget: a put begun before it is dropped
        self._seen = self._marker()

    def _marker(self) -> int:
        """The revocation file's size: it only grows (one byte per revocation), so any change is a revocation."""
        if self.revocations is None:
            return 0
        try:
            return os.stat(self.revocations).st_size
        except OSError:
            return -1

    def revoked_elsewhere(self) -> None:
        """Tell the other processes sharing ``revocations`` (called after the revocation committed)."""
        if self.revocations is None:
            return
        try:
            self.revocations.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.revocations, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        except OSError:
            pass  # the others then refuse the key within ttl_s, as across hosts

    def get(self, digest: str) -> Principal | None:
        if self._entries and self.revocations is not None and (seen := self._marker()) != self._seen:
            self._seen = seen  # revoked by another process: every entry may be the revoked key
            self.clear()
            return None
        hit = self._entries.get(digest)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def put(self, digest: str, principal: Principal, generation: int) -> None:
        """Keep ``principal``, verified by a read that began at ``generation``."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return  # a key was revoked while this one was read: the read may predate it
            now = time.monotonic()
            if len(self._entries) >= self.max_entries:
                for stale in [d for d, (expires, _) in self._entries.items() if expires <= now]:
                    del self._entries[stale]
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries.pop(digest, None)  # re-inserted last: the eviction order is the verification order
            self._entries[digest] = (now + self.ttl_s, principal)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]

    def clear(self) -> None:
        """Trust nothing kept: the database is unreachable, so every request asks it (and answers its 503, as
        without the cache) until a verification succeeds again and is kept."""
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Accounts:
    def __init__(self, db: Database, key_cache_seconds: float = 0.0, revocations: Path | None = None) -> None:
        self.db = db
        self.keys = KeyCache(key_cache_seconds, revocations=revocations)

    # organizations -----------------------------------------------------------------------------
    def create_org(self, name: str) -> Organization:
        name = name.strip()
        if not name or len(name) > 256:
            raise InvalidRequest("Organization name must be 1-256 characters.", param="name")
        org = Organization(id=new_id("org-"), name=name, created_at=now())
        with self.db.session() as s:
            s.add(org)
        return org

    def list_orgs(self) -> list[Organization]:
        with self.db.session() as s:
            return list(s.exec(select(Organization).order_by(col(Organization.created_at), col(Organization.id))))

    def get_org(self, org_id: str) -> Organization:
        with self.db.session() as s:
            org = s.get(Organization, org_id)
        if org is None:
            raise NotFound(f"No such organization: {org_id}", param="organization_id")
        return org

    # limits: overrides of the settings defaults ---------------------------------------------------------
    def limit_overrides(self, org_id: str) -> dict[str, int]:
        self.get_org(org_id)
        with self.db.session() as s:
            return limit_overrides(s, [org_id]).get(org_id, {})

    def set_limit_overrides(self, org_id: str, overrides: dict[str, object]) -> dict[str, int]:
        """Replace the organization's overrides; a field absent or null takes the settings default again."""
        self.get_org(org_id)
        clean = valid_overrides(overrides)
        with self.db.session() as s:
            row = s.get(OrganizationLimits, org_id) or OrganizationLimits(organization_id=org_id, updated_at=now())
            row.limits, row.updated_at = clean, now()
            s.add(row)
        return clean

    def effective_limits(self, org_id: str, defaults: LimitSettings) -> LimitSettings:
        with self.db.session() as s:
            return defaults.model_copy(update=limit_overrides(s, [org_id]).get(org_id, {}))

    # API keys ------------------------------------------------------------------------------------
    def create_key(self, org_id: str, name: str = "") -> IssuedKey:
        self.get_org(org_id)
        secret = KEY_PREFIX + random_token(40)
        key = ApiKey(
            id=new_id("key_"),
            organization_id=org_id,
            name=name[:256],
            prefix=secret[:12],
            secret_sha256=sha256(secret),
            created_at=now(),
        )
        with self.db.session() as s:
            s.add(key)
        return IssuedKey(key=key, secret=secret)

    def list_keys(self, org_id: str) -> list[ApiKey]:
        self.get_org(org_id)
        with self.db.session() as s:
            stmt = (
                select(ApiKey).where(ApiKey.organization_id == org_id).order_by(col(ApiKey.created_at), col(ApiKey.id))
            )
            return list(s.exec(stmt))

    def revoke_key(self, key_id: str) -> ApiKey:
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None:
                raise NotFound(f"No such API key: {key_id}", param="key_id")
            if key.revoked_at is None:
                key.revoked_at = now()
                s.add(key)
        self.keys.forget(key_id)  # committed: from the next request on, this process asks the database
        self.keys.revoked_elsewhere()  # and so do the other processes of this host
        return key

    def cached(self, secret: str | None) -> Principal | None:
        """The caller, if its key was verified in the last ``key_cache_seconds`` (no I/O: fit for the event loop);
        None: ask ``authenticate``."""
        return self.keys.get(sha256(secret)) if secret else None

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        digest, generation = sha256(secret), self.keys.generation
        # the three columns on a plain connection (~120 µs here), not an ORM session (~200+)
        key = self.db.first_row(_KEY_BY_HASH.where(col(ApiKey.secret_sha256) == digest))
        if key is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {_redact(secret)}.")
        if key.revoked_at is not None:
            raise AuthenticationFailed(f"API key {_redact(secret)} has been revoked.", code="revoked_api_key")
        principal = Principal(organization_id=key.organization_id, key_id=key.id)
        self.keys.put(digest, principal, generation)
        return principal

    # admin credential -------------------------------------------------------------------------------
    def ensure_admin_credential(self, configured: str | None) -> str | None:
        """With no configured admin key and none stored, generate one; return it (to print once)."""
        if configured:
            return None
        with self.db.session() as s:
            if s.exec(select(AdminCredential)).first() is not None:
                return None
        return self.rotate_admin_credential()

    def rotate_admin_credential(self) -> str:
        secret = ADMIN_PREFIX + random_token(40)
        with self.db.session() as s:
            for old in s.exec(select(AdminCredential)):
                s.delete(old)
            s.add(AdminCredential(secret_sha256=sha256(secret), created_at=now()))
        return secret

    def check_admin(self, secret: str | None, configured: str | None) -> None:
        if not secret:
            raise AuthenticationFailed("Admin credential required: 'Authorization: Bearer <admin key>'.")
        if configured is not None:
            if hmac.compare_digest(sha256(secret), sha256(configured)):
                return
        else:
            with self.db.session() as s:
                if s.exec(select(AdminCredential).where(AdminCredential.secret_sha256 == sha256(secret))).first():
                    return
        raise AuthenticationFailed("Incorrect admin credential.")


def _redact(secret: str) -> str:
    return secret[:6] + "*" * 4 + secret[-4:] if len(secret) > 12 else "****"


def limit_overrides(s: Session, org_ids: list[str]) -> dict[str, dict[str, int]]:
    """Each listed organization's stored overrides (organizations without any are absent)."""
    rows = s.exec(select(OrganizationLimits).where(col(OrganizationLimits.organization_id).in_(org_ids)))
    return {row.organization_id: dict(row.limits) for row in rows}


def valid_overrides(overrides: dict[str, object]) -> dict[str, int]:
    """Only known limit fields, each a non-negative integer (null: drop the override)."""
    clean: dict[str, int] = {}
    for name, value in overrides.items():
        if name not in ORG_LIMIT_FIELDS:
            raise InvalidRequest(
                f"Unknown limit '{name}'; known: {', '.join(ORG_LIMIT_FIELDS)}.", param=name, code="unknown_parameter"
            )
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(
                f"Limit '{name}' must be a non-negative integer or null.", param=name, code="invalid_value"
            )
        clean[name] = value
    return clean
