from django.apps import AppConfig


def _load_tokenizers_at_worker_start(**kwargs: object) -> None:
    """Load the tokenizers once when the worker starts, before it takes a task, so no answer
    spends a second and a half (Llama 3) loading them: the threads pool (the run command's
    and docker-compose.yml's) shares them; a prefork pool's processes inherit them."""
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
            _load_tokenizers_at_worker_start, weak=False, dispatch_uid="models_catalog.tokenizers"
        )
