import os

from celery import Celery
from celery.signals import worker_init

import config.logging  # noqa: F401 - connects the task id to every worker log line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _load_tokenizer_before_forking(**kwargs: object) -> None:
    """Load the tokenizers once in the worker's parent, so every pool process inherits
    them instead of spending a second and a half (Llama 3) on its first answer."""
    from models_catalog.tokenizer import llama2_processor, llama3_encoding

    llama3_encoding()
    llama2_processor()
