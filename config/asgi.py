import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# What django.core.asgi.get_asgi_application does, with our handler (config.asgi_handler).
django.setup(set_prefix=False)

# Imported once Django is set up: they read the settings.
from config.asgi_handler import OneHopASGIHandler  # noqa: E402
from config.body_limit import BodySizeLimit  # noqa: E402
from config.fair_share import TenantFairShare  # noqa: E402

django_application = OneHopASGIHandler()

# Bodies over MAX_REQUEST_BODY_BYTES are refused as they arrive, before Django spools them;
# then no tenant has more than its share of this process's requests being worked on.
application = BodySizeLimit(TenantFairShare(django_application))
