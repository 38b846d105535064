"""The web process: ``create_app()`` builds the Flask app (``gunicorn "webhooks:create_app()"``)."""

from webhooks.app import create_app

__all__ = ["create_app"]
