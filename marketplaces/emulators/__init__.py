"""The marketplace emulators, by name: each factory builds a Flask app speaking that wire protocol."""

from __future__ import annotations

from typing import Callable

from flask import Flask

from config import Settings

from marketplaces.emulators.aws import create_aws_emulator
from marketplaces.emulators.azure import create_azure_emulator
from marketplaces.emulators.gcp import create_gcp_emulator

EMULATORS: dict[str, Callable[..., Flask]] = {
    "aws": create_aws_emulator,
    "azure": create_azure_emulator,
    "gcp": create_gcp_emulator,
}


def ports(settings: Settings) -> dict[str, int]:
    """Return the port each emulator listens on (``marketsync emulators``)."""
    return {"aws": settings.AWS_EMULATOR_PORT, "azure": settings.AZURE_EMULATOR_PORT, "gcp": settings.GCP_EMULATOR_PORT}


def launch_options(settings: Settings, receiver_base: str | None) -> dict[str, dict[str, object]]:
    """Return each emulator's options: its public URL and where it sends lifecycle notifications."""
    options: dict[str, dict[str, object]] = {"aws": {"public_url": settings.emulator_url("aws")},
                                             "azure": {}, "gcp": {}}
    if receiver_base:
        base = receiver_base.rstrip("/")
        options["aws"].update(receiver_url=f"{base}/webhooks/aws/sns", eventbridge_url=f"{base}/webhooks/aws/events")
        # What an API destination's connection adds: a secret of AWS_EVENTBRIDGE_SECRETS (else an API key).
        eventbridge_secret = (settings.AWS_EVENTBRIDGE_SECRETS or settings.API_KEYS or ("",))[0]
        if eventbridge_secret:
            options["aws"]["eventbridge_headers"] = {"Authorization": f"Bearer {eventbridge_secret}"}
        options["azure"].update(receiver_url=f"{base}/webhooks/azure")
        options["gcp"].update(receiver_url=f"{base}/webhooks/gcp/pubsub",
                              audience=settings.GCP_PUSH_AUDIENCE or f"{base}/webhooks/gcp/pubsub")
    return options
