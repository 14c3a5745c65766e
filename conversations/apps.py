from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"

    def ready(self) -> None:
        from config.metrics import database_metrics_register
        from conversations import (
            checks,  # noqa: F401 - registers the checks of the generation pipeline's timeouts
            schema,  # noqa: F401 - registers the OpenAPI auth extension
        )
        from conversations.metrics import generation_metrics

        database_metrics_register(generation_metrics)
