"""Celery tasks of billing. (Webhook delivery lands here.)"""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def deliver_alert_webhook(alert_id: str) -> None:
    """Placeholder until webhook delivery is written: alerts are stored and visible already."""
