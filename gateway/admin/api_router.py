"""``/admin`` controllers: organizations, their API keys and limits. Guarded by the admin credential."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from litestar import Controller, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.admin.protocol import CreateKey, CreateOrganization, KeyObject, LimitsObject, OrganizationObject
from gateway.auth import ServicesDep, require_admin
from gateway.openai.common import list_page
from gateway.services import Services


class AdminController(Controller):
    path = "/admin"
    tags = ["Admin"]
    guards = [require_admin]

    @post("/organizations", status_code=200, sync_to_thread=True)
    def create_org(self, services: ServicesDep, data: JSONBody[CreateOrganization]) -> OrganizationObject:
        return OrganizationObject.of(services.accounts.create_org(data.name))

    @get("/organizations", sync_to_thread=True)
    def list_orgs(self, services: ServicesDep) -> dict[str, Any]:
        return list_page([OrganizationObject.of(o) for o in services.accounts.list_orgs()], has_more=False)

    @post("/organizations/{org_id:str}/keys", status_code=200, sync_to_thread=True)
    def create_key(
        self, services: ServicesDep, org_id: FromPath[str], data: JSONBody[CreateKey | None] = None
    ) -> KeyObject:
        issued = services.accounts.create_key(org_id, (data or CreateKey()).name)
        return KeyObject.of(issued.key, issued.secret)

    @get("/organizations/{org_id:str}/keys", sync_to_thread=True)
    def list_keys(self, services: ServicesDep, org_id: FromPath[str]) -> dict[str, Any]:
        return list_page([KeyObject.of(k) for k in services.accounts.list_keys(org_id)], has_more=False)

    @get("/organizations/{org_id:str}/limits", sync_to_thread=True)
    def get_limits(self, services: ServicesDep, org_id: FromPath[str]) -> LimitsObject:
        """Overrides, the limits in force and the storage used."""
        return limits_object(services, org_id, services.accounts.limit_overrides(org_id))

    @put("/organizations/{org_id:str}/limits", sync_to_thread=True)
    def put_limits(self, services: ServicesDep, org_id: FromPath[str], data: JSONBody[dict[str, Any]]) -> LimitsObject:
        """Replace the overrides (a field absent or null takes the settings default); this gateway applies them at
        once, others within seconds."""
        overrides = services.accounts.set_limit_overrides(org_id, data)
        services.limiter.forget(org_id)
        return limits_object(services, org_id, overrides)

    @post("/keys/{key_id:str}/revoke", status_code=200, sync_to_thread=True)
    def revoke_key(self, services: ServicesDep, key_id: FromPath[str]) -> KeyObject:
        return KeyObject.of(services.accounts.revoke_key(key_id))

    @get("/engines", sync_to_thread=False)
    def engines(self, services: ServicesDep) -> dict[str, Any]:
        """Every engine replica: state, URL, local process id, restarts, requests in flight, adapters loaded."""
        return list_page(services.engines.status(), has_more=False)

    @get("/usage", sync_to_thread=True)
    def usage(self, services: ServicesDep, organization_id: FromQuery[str | None] = None) -> dict[str, Any]:
        """Token usage summed per organization, API key and model."""
        totals = services.usage.totals(organization_id)
        return list_page([{"object": "usage.total", **asdict(t)} for t in totals], has_more=False)


def limits_object(services: Services, org_id: str, overrides: dict[str, int]) -> LimitsObject:
    effective = services.accounts.effective_limits(org_id, services.settings.limits)
    return LimitsObject.of(org_id, overrides, effective, services.quota.used(org_id))
