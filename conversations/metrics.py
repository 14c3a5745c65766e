"""This app's numbers at /metrics (config.metrics): assistant answers by status."""

from __future__ import annotations

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

from conversations.models import Message, MessageRole, MessageStatus


def generation_metrics() -> list[Metric]:
    by_status = dict(
        Message.objects.filter(role=MessageRole.ASSISTANT)
        .order_by()
        .values_list("status")
        .annotate(count=Count("pk"))
    )
    generations = GaugeMetricFamily(
        "llama_generations", "Assistant answers by status.", labels=["status"]
    )
    for status in MessageStatus.values:
        generations.add_metric([status], by_status.get(status, 0))
    return [generations]
