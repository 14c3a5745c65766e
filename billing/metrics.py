"""This app's numbers at /metrics (config.metrics): the ledger by model, open reservations.

Neither reads the ledger. Tokens and cost are summed from the daily rollups
(billing.rollups), which settlement adds to in the transaction that writes each ledger row:
counters kept as the work happens, right for every web and worker process at once, and a
scrape reads one row per day, tenant and model instead of one per answer. (One row per
model would do in a single read, but every tenant's settlements of that model would then
queue on its lock.) Open reservations are state, not a count of events: the partial index
`reservation_open` holds exactly them, so counting it costs what is in flight; a counter
of them would be one row that every reservation and every close of every tenant locks.
"""

from __future__ import annotations

from django.db.models import Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from billing.models import DailyCharge, Reservation, ReservationStatus


def ledger_metrics() -> list[Metric]:
    by_model = list(
        DailyCharge.objects.order_by()
        .values_list("model__model_id")
        .annotate(
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost"),
        )
    )
    open_reservations = Reservation.objects.filter(status=ReservationStatus.OPEN).count()
    tokens = CounterMetricFamily(
        "llama_tokens",
        "Tokens billed in the usage ledger, by model and direction (input, output).",
        labels=["model", "direction"],
    )
    cost = CounterMetricFamily(
        "llama_cost_usd",
        "Cost charged in the usage ledger, in USD, by model.",
        labels=["model"],
    )
    for model_id, input_tokens, output_tokens, amount in by_model:
        tokens.add_metric([model_id, "input"], input_tokens or 0)
        tokens.add_metric([model_id, "output"], output_tokens or 0)
        cost.add_metric([model_id], float(amount or 0))
    reservations = GaugeMetricFamily(
        "llama_reservations_open",
        "Reservations held against budgets for answers not yet settled or released.",
        value=open_reservations,
    )
    return [tokens, cost, reservations]
