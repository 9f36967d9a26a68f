"""Admin API wire schemas: organizations, API keys (the secret appears only in the creation answer), limits."""

from __future__ import annotations

from typing import Literal

import msgspec

from storage.settings import ORG_LIMIT_FIELDS, LimitSettings
from storage.tables import ApiKey, Organization


class CreateOrganization(msgspec.Struct):
    name: str


class CreateKey(msgspec.Struct):
    name: str = ""


class OrganizationObject(msgspec.Struct):
    id: str
    name: str
    created_at: int
    object: Literal["organization"] = "organization"

    @classmethod
    def of(cls, org: Organization) -> OrganizationObject:
        return cls(id=org.id, name=org.name, created_at=org.created_at)


class KeyObject(msgspec.Struct):
    id: str
    organization_id: str
    name: str
    prefix: str
    created_at: int
    revoked_at: int | None
    object: Literal["api_key"] = "api_key"
    secret: str | None = None  # only when just created

    @classmethod
    def of(cls, key: ApiKey, secret: str | None = None) -> KeyObject:
        return cls(
            id=key.id,
            organization_id=key.organization_id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            secret=secret,
        )


class LimitsObject(msgspec.Struct):
    """An organization's limit overrides, the limits in force (overrides over the settings defaults; null: none),
    and the storage it uses now."""

    organization_id: str
    overrides: dict[str, int]
    effective: dict[str, int | None]
    storage_used_bytes: int
    object: Literal["organization.limits"] = "organization.limits"

    @classmethod
    def of(cls, org_id: str, overrides: dict[str, int], effective: LimitSettings, used: int) -> LimitsObject:
        return cls(
            organization_id=org_id,
            overrides=overrides,
            effective={f: getattr(effective, f) for f in ORG_LIMIT_FIELDS},
            storage_used_bytes=used,
        )
