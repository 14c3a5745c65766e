"""manage.py ensure_demo_api_key: the run command's demo tenant and a key that works.

The run command (devtools.stack) calls it by name, as it calls migrate.
"""

from argparse import ArgumentParser
from pathlib import Path

from django.core.management.base import BaseCommand

from conversations.demo import demo_api_key_ensure


class Command(BaseCommand):
    help = (
        "Create the demo tenant and an API key when needed; print a working key, kept in "
        "--key-file (owner-only) so the next run prints the same one."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--key-file", required=True, help="Where the secret is kept")

    def handle(self, *args: object, key_file: str, **options: object) -> str:
        return demo_api_key_ensure(key_file=Path(key_file))
