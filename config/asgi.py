import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_asgi_application()

# Imported once Django is set up: it reads the settings.
from config.body_limit import BodySizeLimit  # noqa: E402
from config.fair_share import TenantFairShare  # noqa: E402

# Bodies over MAX_REQUEST_BODY_BYTES are refused as they arrive, before Django spools them;
# then no tenant has more than its share of this process's requests being worked on.
application = BodySizeLimit(TenantFairShare(django_application))
