from django.contrib.admin.apps import AdminConfig


class GovernorAdminConfig(AdminConfig):
    """django.contrib.admin with our site: its front page is billing's cockpit
    (billing/admin_site.py), its logins limited (config/admin_site.py). Named by a string,
    so config imports no app."""

    default_site = "billing.admin_site.CockpitAdminSite"
