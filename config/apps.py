from django.contrib.admin.apps import AdminConfig


class GovernorAdminConfig(AdminConfig):
    """django.contrib.admin with our site (a limit on failed logins): config/admin_site.py.

    The one AppConfig of the config package, so it also registers config/checks.py."""

    default_site = "config.admin_site.GovernorAdminSite"

    def ready(self) -> None:
        super().ready()
        import config.checks  # noqa: F401 - registers the timeout checks
