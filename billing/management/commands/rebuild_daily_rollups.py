"""manage.py rebuild_daily_rollups: recompute the cockpit's daily rollups from the ledgers.

Settlement and the provider ledger keep the rollups in step as they write; rebuild after
restoring or importing ledger rows some other way. On PostgreSQL, answers that finish
while it runs wait for it (the ledgers are locked against writes for its duration).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing.rollups import daily_rollups_rebuild


class Command(BaseCommand):
    help = "Recompute the daily rollups of tenant charges and provider cost from the ledgers."

    def handle(self, *args: Any, **options: Any) -> None:
        charges, end_users, provider = daily_rollups_rebuild()
        self.stdout.write(
            f"Rebuilt {charges} daily charge rows, {end_users} daily end-user charge rows and "
            f"{provider} daily provider cost rows."
        )
