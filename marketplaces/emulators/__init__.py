"""The marketplace emulators, by name: each factory builds a Flask app speaking that wire protocol."""

from __future__ import annotations

from typing import Callable

from flask import Flask

from marketplaces.emulators.aws import create_aws_emulator
from marketplaces.emulators.azure import create_azure_emulator
from marketplaces.emulators.gcp import create_gcp_emulator

EMULATORS: dict[str, Callable[..., Flask]] = {
    "aws": create_aws_emulator,
    "azure": create_azure_emulator,
    "gcp": create_gcp_emulator,
}
