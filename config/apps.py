from django.contrib.admin.apps import AdminConfig


class GovernorAdminConfig(AdminConfig):
    """django.contrib.admin with our site (a limit on failed logins): config/admin_site.py."""

    default_site = "config.admin_site.GovernorAdminSite"
