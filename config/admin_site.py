"""The Django admin's site: failed logins are limited (config.auth_throttle). Its front page,
the operators' cockpit, is billing's (billing.admin_site extends this site).

Failures are counted per username and per client address. Once either is over
ADMIN_LOGIN_FAILURE_LIMIT in an ADMIN_LOGIN_FAILURE_WINDOW_SECONDS window, the login page
answers 429 with the reason, before the password is looked at: a right password is refused
too until the window ends, or guessing would go on at full speed.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from config import auth_throttle

LIMIT = auth_throttle.ADMIN_LOGINS


def _scopes(request: HttpRequest) -> list[str]:
    # Usernames are counted case-insensitively, so "Admin" does not start a fresh count.
    username = str(request.POST.get("username", "")).casefold()
    return [
        auth_throttle.address_scope(auth_throttle.client_address(request)),
        auth_throttle.digest_scope("user", username),
    ]


def _minutes(seconds: int) -> int:
    return max(1, -(-seconds // 60))


class GovernorAdminSite(admin.AdminSite):
    """Failed logins limited. Its front page is billing's cockpit: billing.admin_site."""

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method != "POST":
            return super().login(request, extra_context)
        scopes = _scopes(request)
        retry_after = LIMIT.retry_after(scopes)
        if retry_after is not None:
            return self._too_many_failed_logins(request, retry_after, extra_context)
        response = super().login(request, extra_context)
        # A login that worked redirects; the form shown again means it failed (a wrong
        # password, an unknown or inactive user, or one who is not staff).
        if response.status_code == 200:
            retry_after = LIMIT.record_failure(scopes)
            if retry_after is not None:
                return self._too_many_failed_logins(request, retry_after, extra_context)
        return response

    def _too_many_failed_logins(
        self, request: HttpRequest, retry_after: int, extra_context: dict[str, Any] | None
    ) -> HttpResponse:
        form_class = self.login_form or AdminAuthenticationForm
        form = form_class(request, initial={"username": request.POST.get("username", "")})
        # Unbound, so the password is never looked at; add_error expects a cleaned_data.
        form.cleaned_data = {}
        form.add_error(
            None,
            "Too many failed logins for this username or from this address. "
            f"Try again in {_minutes(retry_after)} minute(s).",
        )
        context = {
            **self.each_context(request),
            "title": "Log in",
            "subtitle": None,
            "app_path": request.get_full_path(),
            "username": request.user.get_username(),
            "form": form,
            REDIRECT_FIELD_NAME: reverse("admin:index", current_app=self.name),
            **(extra_context or {}),
        }
        request.current_app = self.name
        response = TemplateResponse(
            request, self.login_template or "admin/login.html", context, status=429
        )
        response["Retry-After"] = str(retry_after)
        return response
