import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_asgi_application()

# Imported once Django is set up: it reads the settings.
from config.body_limit import BodySizeLimit  # noqa: E402

# Bodies over MAX_REQUEST_BODY_BYTES are refused as they arrive, before Django spools them.
application = BodySizeLimit(django_application)
