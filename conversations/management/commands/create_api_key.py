from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from conversations.services import api_key_create, tenant_get_by_slug


class Command(BaseCommand):
    help = "Create an API key for a tenant. The secret is printed alone on the last line, once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug", help="The tenant's slug")
        parser.add_argument("--name", default="", help="A label for the key, e.g. 'production'")

    def handle(self, *args: object, slug: str, name: str, **options: object) -> None:
        try:
            tenant = tenant_get_by_slug(slug=slug)
        except ApplicationError as error:
            raise CommandError(error.message) from error
        if not tenant.is_active:
            raise CommandError(f"Tenant {slug!r} is inactive; its keys would not authenticate.")
        created = api_key_create(tenant=tenant, name=name)
        self.stdout.write(
            f"Created API key {created.api_key.prefix} for tenant {tenant.slug}. "
            "Store the secret below now; it cannot be shown again."
        )
        self.stdout.write(created.secret)
