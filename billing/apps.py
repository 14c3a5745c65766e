from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self) -> None:
        from billing.metrics import ledger_metrics
        from config.metrics import database_metrics_register

        database_metrics_register(ledger_metrics)
