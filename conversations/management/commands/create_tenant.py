from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from conversations.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug", help="Short unique id, e.g. acme")
        parser.add_argument("--name", default="", help="Display name (defaults to the slug)")

    def handle(self, *args: object, slug: str, name: str, **options: object) -> None:
        try:
            tenant = tenant_create(slug=slug, name=name)
        except ApplicationError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"Created tenant {tenant.slug} ({tenant.name}).")
