"""This app's numbers at /metrics (config.metrics): assistant answers by status.

Still a count of the messages table at each scrape, unlike the ledger's numbers (billing.
metrics): it is the table's state, not a count of events. Answers leave it with their
conversation, and the sweeper, cancellation and the worker each make answers final in
transactions of their own; a counter would have to follow all of them, and one kept outside
those transactions (Redis, a process's memory) drifts whenever one rolls back or a worker
dies.
"""

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
