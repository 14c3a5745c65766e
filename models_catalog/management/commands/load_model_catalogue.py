from django.core.management.base import BaseCommand

from models_catalog.services import catalogue_load


class Command(BaseCommand):
    help = "Insert or refresh the Bedrock Meta models of the built-in catalogue."

    def handle(self, *args: object, **options: object) -> None:
        created, updated = catalogue_load()
        self.stdout.write(f"Model catalogue: {created} created, {updated} updated.")
