"""A worker's database connection between tasks follows Django's CONN_MAX_AGE, as a web
request's does: kept while it is young and usable, closed once it is older (0: after every
task). Celery's Django fixup alone would close it around every task, whatever the setting
(config.celery, CELERY_DB_REUSE_MAX)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.db import connection

from config.celery import app
from conversations.tasks import sweep_generations

pytestmark = pytest.mark.django_db(transaction=True)


def a_task_runs(*, eager: bool = False) -> None:
    """The signals a worker sends around one task (the task itself is not run here)."""
    task = sweep_generations
    task.push_request(id="t", is_eager=eager)
    try:
        task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
        task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={}, retval=None)
    finally:
        task.pop_request()


@pytest.fixture
def max_age() -> Iterator[None]:
    original = connection.settings_dict["CONN_MAX_AGE"]
    yield
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = original


def open_with_max_age(seconds: int) -> object:
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = seconds
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return connection.connection


def test_a_young_connection_is_kept_across_tasks(max_age) -> None:
    opened = open_with_max_age(300)
    a_task_runs()
    a_task_runs()
    assert connection.connection is opened


def test_with_no_max_age_the_connection_is_closed_after_each_task(max_age) -> None:
    open_with_max_age(0)
    a_task_runs()
    assert connection.connection is None


def test_a_task_run_eagerly_leaves_its_callers_connection_alone(max_age) -> None:
    opened = open_with_max_age(0)
    a_task_runs(eager=True)
    assert connection.connection is opened


def test_celerys_fixup_closes_only_every_so_many_tasks() -> None:
    assert settings.CELERY_DB_REUSE_MAX >= 100
    assert app.conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX
