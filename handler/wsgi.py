"""WSGI entry for gunicorn (``handler.wsgi:app``) and the Lambda adapter: the app built from the environment.

Importing this module reads and validates every env var (a bad value fails here, at boot) but starts
no thread and loads no model; gunicorn's ``post_worker_init`` hook (or the first request) does that.
"""

from handler.app import create_app
from infra.logs import configure_logging
from infra.settings import Settings

settings = Settings.from_env()
configure_logging(settings)  # JSON lines on stdout before anything else logs
app = create_app(settings)
