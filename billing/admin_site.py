"""The Django admin's site: config's (failed logins limited), with the operators' cockpit
(billing.admin_cockpit) as its front page. config.apps names it by string."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from config.admin_site import GovernorAdminSite


class CockpitAdminSite(GovernorAdminSite):
    # The front page is the operators' cockpit, with the app list below it.
    index_template = "admin/cockpit/index.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        from billing.admin_cockpit import cockpit_context  # billing's models load after us

        return super().index(request, {**cockpit_context(request), **(extra_context or {})})
