import os

from celery import Celery, Task
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

import config.logging  # noqa: F401 - connects the task id to every worker log line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def database_connections_as_between_requests(sender: Task | None = None, **_: object) -> None:
    """Around each task, what Django does around each request: the task thread's connection
    is closed if it is broken or older than CONN_MAX_AGE, and kept otherwise (settings:
    CELERY_DB_REUSE_MAX). Not for a task run eagerly, in its caller's thread: that thread's
    connection (a test's transaction, say) is its caller's."""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()


# The tokenizers are loaded before the pool starts by models_catalog.apps (worker_init).
