"""The operators' cockpit on a ledger of a million rows: server time of its pages.

Fills a throwaway PostgreSQL database (``bench_cockpit``, created and dropped here) with
1,000,000 tenant-charge rows (UsageRecord) across 50 tenants (skewed: the biggest has about
a seventh of the traffic), 12 models and 60 days, the matching provider-ledger rows (one
completed attempt each, and a failed attempt before it for 5 % of them), one closed
reservation per answer, end users, budgets (tenant-wide monthly, per model, per end user),
open reservations, alerts, overruns, and the last hour's failures and queue. Inserts are
``INSERT … SELECT`` over ``generate_series``; the daily rollups are then rebuilt from the
ledgers with ``daily_rollups_rebuild`` (what ``manage.py rebuild_daily_rollups`` does).

Then, logged in as a superuser through Django's test client (the whole request: middleware,
session, queries, SVG, template; DEBUG off), it times the admin's front page (the cockpit)
and the page of the biggest and of a small tenant, and each selector alone, printing the
median, min and max of several runs and the queries per page. For comparison it also times
the spend chart's two aggregates run on the ledgers themselves instead of the rollups.

    .venv/bin/python benchmarks/cockpit.py [--rows 1000000] [--runs 7]
        [--postgres-admin-url postgres://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._django import DEFAULT_POSTGRES_URL, setup_django

BENCH_DATABASE = "bench_cockpit"
TENANTS = 50
END_USERS_PER_TENANT = 20
DAYS = 60
RETRIED_SHARE = 0.05
SPREAD_OPEN_RESERVATIONS = 200


@contextmanager
def throwaway_database(postgres_admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of this script's own (benchmarks may run side by side)."""
    import psycopg

    with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    try:
        yield f"{postgres_admin_url.rsplit('/', 1)[0]}/{BENCH_DATABASE}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


def timed(label: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)
    return result


def execute(sql: str, params: list[Any] | None = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.rowcount


def fill(rows: int) -> dict[str, Any]:
    """The ledgers and everything around them. Returns the tenants to time pages of."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from billing.models import Budget
    from conversations.models import Conversation, EndUser, Tenant
    from models_catalog.models import FoundationModel

    tenants = Tenant.objects.bulk_create(
        Tenant(slug=f"tenant-{number:02d}", name=f"Tenant {number:02d}")
        for number in range(TENANTS)
    )
    EndUser.objects.bulk_create(
        EndUser(tenant=tenant, external_id=f"user-{number:02d}")
        for tenant in tenants
        for number in range(END_USERS_PER_TENANT)
    )
    models = list(FoundationModel.objects.order_by("sort_order"))
    for tenant in tenants:
        Conversation.objects.create(tenant=tenant, model=models[0], bedrock_model_id="bench")
    # Numbered lookups for the generated rows: tenant number -> id, model number -> price.
    execute(
        "CREATE TEMP TABLE bench_tenant AS SELECT row_number() OVER (ORDER BY slug) - 1 AS no, "
        "id AS tenant_id FROM conversations_tenant"
    )
    execute(
        "CREATE TEMP TABLE bench_model AS SELECT row_number() OVER (ORDER BY m.sort_order) - 1 "
        "AS no, m.id AS model_id, p.input_price_per_million AS ip, "
        "p.output_price_per_million AS op FROM models_catalog_foundationmodel m "
        "JOIN LATERAL (SELECT * FROM billing_modelprice p WHERE p.model_id = m.id "
        "ORDER BY effective_from DESC LIMIT 1) p ON true"
    )
    execute(
        "CREATE TEMP TABLE bench_end_user AS SELECT t.no AS tenant_no, "
        "row_number() OVER (PARTITION BY e.tenant_id ORDER BY e.external_id) - 1 AS user_no, "
        "e.id FROM conversations_enduser e JOIN bench_tenant t ON t.tenant_id = e.tenant_id"
    )
    # Skewed tenants (random()^2), uniform models, a 21st "end user" meaning none.
    timed(
        f"{rows:,} usage records",
        lambda: execute(
            "INSERT INTO billing_usagerecord (id, tenant_id, end_user_id, conversation_id, "
            "message_id, model_id, input_tokens, output_tokens, input_price_per_million, "
            "output_price_per_million, cost, currency, outcome, created_at) "
            "SELECT gen_random_uuid(), t.tenant_id, e.id, gen_random_uuid(), gen_random_uuid(), "
            "m.model_id, d.tokens_in, d.tokens_out, m.ip, m.op, "
            "(d.tokens_in * m.ip + d.tokens_out * m.op) / 1000000, 'USD', "
            "CASE WHEN d.cancelled THEN 'cancelled' ELSE 'completed' END, "
            "now() - d.age * interval '1 day' * %s "
            "FROM (SELECT floor(power(random(), 2) * %s)::int AS tenant_no, "
            "floor(random() * 12)::int AS model_no, floor(random() * %s)::int AS user_no, "
            "50 + floor(random() * 2000)::int AS tokens_in, "
            "floor(random() * 800)::int AS tokens_out, random() AS age, "
            "random() < 0.01 AS cancelled FROM generate_series(1, %s)) d "
            "JOIN bench_tenant t ON t.no = d.tenant_no JOIN bench_model m ON m.no = d.model_no "
            "LEFT JOIN bench_end_user e ON e.tenant_no = d.tenant_no AND e.user_no = d.user_no",
            [DAYS, TENANTS, END_USERS_PER_TENANT + 1, rows],
        ),
    )
    provider_columns = (
        "id, tenant_id, conversation_id, message_id, attempt, model_id, outcome, error_code, "
        "input_tokens, output_tokens, counts_reported, input_price_per_million, "
        "output_price_per_million, cost, currency, created_at"
    )
    retried = f"(get_byte(uuid_send(u.message_id), 0) < {int(256 * RETRIED_SHARE)})"
    timed(
        "provider attempts (one per answer, a failed one first for 5 %)",
        lambda: (
            execute(
                f"INSERT INTO billing_providerattempt ({provider_columns}) "  # noqa: S608
                "SELECT gen_random_uuid(), u.tenant_id, u.conversation_id, u.message_id, "
                f"CASE WHEN {retried} THEN 2 ELSE 1 END, u.model_id, u.outcome, '', "
                "u.input_tokens, u.output_tokens, true, u.input_price_per_million, "
                "u.output_price_per_million, u.cost, 'USD', u.created_at "
                "FROM billing_usagerecord u"
            ),
            execute(
                f"INSERT INTO billing_providerattempt ({provider_columns}) "  # noqa: S608
                "SELECT gen_random_uuid(), u.tenant_id, u.conversation_id, u.message_id, 1, "
                "u.model_id, 'failed', 'ThrottlingException', u.input_tokens, 0, true, "
                "u.input_price_per_million, u.output_price_per_million, "
                "u.input_tokens * u.input_price_per_million / 1000000, 'USD', "
                "u.created_at - interval '2 seconds' "
                f"FROM billing_usagerecord u WHERE {retried}"
            ),
        ),
    )
    reservation_columns = (
        "id, tenant_id, end_user_id, model_id, message_id, conversation_id, bedrock_model_id, "
        "prompt, prompt_tokens, max_gen_len, input_price_per_million, "
        "output_price_per_million, amount, rate_token_counters, status, created_at, closed_at, "
        "close_reason"
    )
    timed(
        "one closed reservation per answer",
        lambda: execute(
            f"INSERT INTO billing_reservation ({reservation_columns}) "  # noqa: S608
            "SELECT gen_random_uuid(), u.tenant_id, u.end_user_id, u.model_id, u.message_id, "
            "u.conversation_id, '', '', u.input_tokens, 1024, u.input_price_per_million, "
            "u.output_price_per_million, u.cost * 2, '[]', 'settled', "
            "u.created_at - (0.5 + random() * 8) * interval '1 second', u.created_at, u.outcome "
            "FROM billing_usagerecord u"
        ),
    )
    # Answers that failed or expired (released, no charge), some within the last hour; the
    # last hour's failures get their messages (the cockpit reads their error codes).
    execute(
        f"INSERT INTO billing_reservation ({reservation_columns}) "  # noqa: S608
        "SELECT gen_random_uuid(), t.tenant_id, NULL, m.model_id, gen_random_uuid(), NULL, '', "
        "'', 100, 1024, m.ip, m.op, 0.001, '[]', 'released', now() - d.age, "
        "now() - d.age + interval '5 seconds', d.reason "
        "FROM (SELECT floor(power(random(), 2) * %s)::int AS tenant_no, "
        "floor(random() * 12)::int AS model_no, "
        "CASE WHEN g %% 10 = 0 THEN 'expired' ELSE 'failed' END AS reason, "
        "CASE WHEN g <= 120 THEN random() * interval '1 hour' "
        "ELSE random() * interval '60 days' END AS age FROM generate_series(1, %s) g) d "
        "JOIN bench_tenant t ON t.no = d.tenant_no JOIN bench_model m ON m.no = d.model_no",
        [TENANTS, rows // 50],
    )
    execute(
        "INSERT INTO conversations_message (id, tenant_id, conversation_id, sequence, role, "
        "content, status, stop_reason, attempt_count, error_code, error_message, created_at, "
        "updated_at) SELECT r.message_id, r.tenant_id, c.id, row_number() OVER (PARTITION BY "
        "c.id ORDER BY r.created_at), 'assistant', '', 'failed', '', 5, "
        "CASE WHEN r.close_reason = 'expired' THEN 'expired' ELSE 'ThrottlingException' END, "
        "'', r.created_at, r.closed_at FROM billing_reservation r "
        "JOIN conversations_conversation c ON c.tenant_id = r.tenant_id "
        "WHERE r.status = 'released' AND r.closed_at >= now() - interval '1 hour'"
    )
    execute(
        "INSERT INTO conversations_message (id, tenant_id, conversation_id, sequence, role, "
        "content, status, stop_reason, attempt_count, error_code, error_message, created_at, "
        "updated_at) SELECT gen_random_uuid(), c.tenant_id, c.id, 100000 + g, 'assistant', '', "
        "CASE WHEN g %% 4 = 0 THEN 'running' ELSE 'queued' END, '', 0, '', '', "
        "now() - g * interval '1 second', now() FROM conversations_conversation c "
        "CROSS JOIN generate_series(1, 2) g"
    )
    # Open reservations (answers in progress) held against budgets.
    execute(
        f"INSERT INTO billing_reservation ({reservation_columns}) "  # noqa: S608
        "SELECT gen_random_uuid(), t.tenant_id, e.id, m.model_id, gen_random_uuid(), NULL, '', "
        "'', 100, 1024, m.ip, m.op, 0.002, '[]', 'open', now(), NULL, '' "
        "FROM (SELECT floor(random() * %s)::int AS tenant_no, floor(random() * 12)::int AS "
        "model_no, floor(random() * %s)::int AS user_no FROM generate_series(1, %s)) d "
        "JOIN bench_tenant t ON t.no = d.tenant_no JOIN bench_model m ON m.no = d.model_no "
        "JOIN bench_end_user e ON e.tenant_no = d.tenant_no AND e.user_no = d.user_no",
        [TENANTS, END_USERS_PER_TENANT, SPREAD_OPEN_RESERVATIONS],
    )
    # Budgets: a tenant-wide monthly hard budget each, a per-model daily one for every
    # second tenant and a per-end-user daily one for every fifth; counters in step with the
    # ledger, as settlement keeps them.
    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    budgets = []
    for number, tenant in enumerate(tenants):
        budgets.append(
            Budget(tenant=tenant, name="monthly", period="month", limit_amount=400 - 7 * number)
        )
        if number % 2 == 0:
            budgets.append(
                Budget(
                    tenant=tenant, name="405b daily", period="day", model=models[6], limit_amount=5
                )
            )
        if number % 5 == 0:
            budgets.append(
                Budget(
                    tenant=tenant,
                    name="per user daily",
                    period="day",
                    per_end_user=True,
                    limit_amount=2,
                )
            )
    Budget.objects.bulk_create(budgets)
    execute(
        "UPDATE billing_budget b SET period_start = %s, spent_amount = COALESCE(("
        "SELECT sum(u.cost) FROM billing_usagerecord u WHERE u.tenant_id = b.tenant_id "
        "AND u.created_at >= %s), 0) WHERE b.period = 'month'",
        [month_start, month_start],
    )
    # Alerts: a soft-threshold alert for every second tenant; 500 overruns over the days.
    execute(
        "INSERT INTO billing_alert (id, tenant_id, budget_id, end_user_id, scope_key, kind, "
        "period_start, spent_amount, limit_amount, details, created_at, webhook_attempts, "
        "webhook_last_error) SELECT gen_random_uuid(), b.tenant_id, b.id, NULL, '', "
        "'soft_threshold', %s, b.spent_amount, b.limit_amount, '{}', now() - random() * "
        "interval '5 days', 1, '' FROM billing_budget b WHERE b.period = 'month' "
        "AND b.tenant_id %% 2 = 0",
        [month_start],
    )
    execute(
        "INSERT INTO billing_alert (id, tenant_id, budget_id, end_user_id, scope_key, kind, "
        "period_start, spent_amount, limit_amount, details, created_at, webhook_attempts, "
        "webhook_last_error) SELECT gen_random_uuid(), u.tenant_id, NULL, NULL, u.message_id, "
        "'overrun', u.created_at, u.cost * 1.5, u.cost, json_build_object('message_id', "
        "u.message_id, 'reported_input_tokens', u.input_tokens, 'reported_output_tokens', "
        "u.output_tokens * 3 / 2, 'reserved_input_tokens', u.input_tokens, "
        "'reserved_output_tokens', u.output_tokens, 'reported_cost', (u.cost * 1.5)::text, "
        "'charged', u.cost::text), u.created_at, 0, '' FROM billing_usagerecord u "
        "ORDER BY u.message_id LIMIT 500"
    )
    from billing.rollups import daily_rollups_rebuild

    counts = timed("rollups rebuilt from the ledgers", daily_rollups_rebuild)
    print(
        f"  rollup rows: {counts[0]:,} daily charges, {counts[1]:,} daily end-user charges, "
        f"{counts[2]:,} daily provider costs"
    )
    timed("ANALYZE", lambda: execute("ANALYZE"))
    User.objects.create_superuser("bench", "bench@example.com", "bench")
    biggest = (
        Tenant.objects.filter(slug="tenant-00").values_list("pk", flat=True).get(),
        "tenant-00",
    )
    small = (
        Tenant.objects.filter(slug="tenant-40").values_list("pk", flat=True).get(),
        "tenant-40",
    )
    return {"biggest": biggest, "small": small}


def measure(action: Callable[[], Any], runs: int) -> tuple[float, float, float, float]:
    """Median, min and max wall ms, and median CPU ms of this process (Python's share:
    steadier than wall time on a shared machine)."""
    action()  # warm: caches, the first query plans
    durations, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        durations.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return statistics.median(durations), min(durations), max(durations), statistics.median(cpu)


def page_queries(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    return len(queries)


def report(tenants: dict[str, Any], runs: int) -> None:
    from django.contrib.auth.models import User
    from django.db.models import Sum
    from django.db.models.functions import TruncDate
    from django.test import Client, RequestFactory
    from django.urls import reverse
    from django.utils import timezone

    from billing import cockpit
    from billing.admin_cockpit import cockpit_context, tenant_cockpit_context
    from billing.models import ProviderAttempt, UsageRecord

    client = Client(SERVER_NAME="localhost")
    client.force_login(User.objects.get(username="bench"))
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200, response.status_code
    assert b'id="spend-by-day"' in response.content

    now = timezone.now()
    today = cockpit.utc_today(now)
    biggest_id, biggest_slug = tenants["biggest"]
    small_id, small_slug = tenants["small"]
    biggest_rows = UsageRecord.objects.filter(tenant_id=biggest_id).count()
    small_rows = UsageRecord.objects.filter(tenant_id=small_id).count()
    pages = [
        ("GET /admin/ (the cockpit)", reverse("admin:index")),
        (
            f"GET tenant page, {biggest_slug} ({biggest_rows:,} ledger rows)",
            reverse("admin:conversations_tenant_change", args=[biggest_id]),
        ),
        (
            f"GET tenant page, {small_slug} ({small_rows:,} ledger rows)",
            reverse("admin:conversations_tenant_change", args=[small_id]),
        ),
    ]
    window_start = now - timedelta(days=cockpit.WINDOW_DAYS)

    def ledger_chart() -> None:
        for model in (UsageRecord, ProviderAttempt):
            list(
                model.objects.filter(created_at__gte=window_start)
                .annotate(day=TruncDate("created_at"))
                .values("day", "model_id")
                .annotate(total=Sum("cost"))
                .order_by()
            )

    request = RequestFactory().get("/")
    request.user = User.objects.get(username="bench")
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("cockpit_context (the front page's cockpit)", lambda: cockpit_context(request)),
        (
            f"tenant_cockpit_context, {biggest_slug} (its page's cockpit)",
            lambda: tenant_cockpit_context(request, biggest_id),
        ),
        ("spend_report (rollups)", lambda: cockpit.spend_report(today=today)),
        ("tenants_by_spend (rollups)", lambda: cockpit.tenants_by_spend(today=today)),
        ("budget_uses (all budgets)", lambda: cockpit.budget_uses(now=now)),
        (
            "recent_alerts + overrun_summary",
            lambda: (cockpit.recent_alerts(), cockpit.overrun_summary(now=now)),
        ),
        ("health (last hour)", lambda: cockpit.health(now=now)),
        (
            f"end_users_by_spend, {biggest_slug}",
            lambda: cockpit.end_users_by_spend(tenant_id=biggest_id, today=today),
        ),
        ("for comparison: the spend chart's sums on the ledgers", ledger_chart),
    ]
    print(
        f"\nServer time, {runs} runs after one warm-up (ms); PostgreSQL, DEBUG off; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:\n"
    )
    header = f"{'what':<58} {'median':>8} {'min':>8} {'max':>8} {'CPU ms':>7} {'queries':>8}"
    print(header)
    print("-" * len(header))
    for label, url in pages:
        median, low, high, cpu = measure(lambda url=url: client.get(url), runs)
        queries = page_queries(client, url)
        print(f"{label:<58} {median:>8.1f} {low:>8.1f} {high:>8.1f} {cpu:>7.1f} {queries:>8}")
    for label, action in parts:
        median, low, high, cpu = measure(action, runs)
        print(f"{label:<58} {median:>8.1f} {low:>8.1f} {high:>8.1f} {cpu:>7.1f} {'':>8}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage records")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per row")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_URL)
    arguments = parser.parse_args()
    # What production runs with; quiet access logs.
    os.environ.update(DEBUG="false", LOG_LEVEL="WARNING")
    with throwaway_database(arguments.postgres_admin_url) as database_url:
        setup_django(database_url)
        print(f"Filling {BENCH_DATABASE}: {TENANTS} tenants, 12 models, {DAYS} days")
        tenants = timed("filled in", lambda: fill(arguments.rows))
        report(tenants, arguments.runs)
        from django.db import connections

        connections.close_all()


if __name__ == "__main__":
    main()
