"""Celery tasks of the OpenAI-compatible surface: thin, logic in services."""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def purge_finished_stateless_calls() -> int:
    """Celery beat: delete the hidden records of finished calls made without `conversation`."""
    from openai_api.services import stateless_calls_purge

    return stateless_calls_purge()
