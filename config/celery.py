import os

from celery import Celery

import config.logging  # noqa: F401 - connects the task id to every worker log line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The tokenizers are loaded before the pool starts by models_catalog.apps (worker_init).
