"""Celery tasks of billing: fetch by id, call a service, own the retry policy."""

from __future__ import annotations

import logging
import random
import uuid

from celery import Task, shared_task
from django.conf import settings

from billing.webhooks import DeliveryResult, alert_webhook_deliver, retry_delay_seconds

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    max_retries=None,  # counted against settings.WEBHOOK_MAX_RETRIES, read at run time
    ignore_result=True,
)
def deliver_alert_webhook(self: Task, alert_id: str) -> str:
    result = alert_webhook_deliver(alert_id=uuid.UUID(alert_id))
    if result is not DeliveryResult.FAILED:
        return result.value
    if self.request.retries < settings.WEBHOOK_MAX_RETRIES:
        delay = retry_delay_seconds(self.request.retries, random.random())  # noqa: S311
        raise self.retry(countdown=delay)
    # The alert itself stays visible in the API and the admin, with the last error.
    logger.error(
        "Alert %s webhook abandoned after %d retries", alert_id, settings.WEBHOOK_MAX_RETRIES
    )
    return "abandoned"
