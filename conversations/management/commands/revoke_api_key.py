from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from conversations.services import api_key_revoke_by_prefix


class Command(BaseCommand):
    help = "Revoke an API key by its visible prefix (e.g. lk_0123456789ab)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: object, prefix: str, **options: object) -> None:
        try:
            api_key = api_key_revoke_by_prefix(prefix=prefix)
        except ApplicationError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"Revoked API key {api_key.prefix} at {api_key.revoked_at.isoformat()}.")
