from django.apps import AppConfig


def _load_tokenizers_before_forking(**kwargs: object) -> None:
    """Load the tokenizers once in the worker's parent, so every pool process inherits
    them instead of spending a second and a half (Llama 3) on its first answer."""
    from models_catalog.tokenizer import llama2_processor, llama3_encoding

    llama3_encoding()
    llama2_processor()


class ModelsCatalogConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "models_catalog"
    verbose_name = "Model catalogue"

    def ready(self) -> None:
        from celery.signals import worker_init

        # Connected here, not in config.celery, so config imports no app. A worker sets
        # Django up (Celery's Django fixup, on import_modules) before it sends worker_init.
        worker_init.connect(
            _load_tokenizers_before_forking, weak=False, dispatch_uid="models_catalog.tokenizers"
        )
