"""ASGI entry point (uvicorn, the `stream` role). Marks the process as ASGI so settings
take database connections from psycopg's pool instead of persistent per-thread ones."""

import os

os.environ["SWITCHYARD_ASGI"] = "1"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
