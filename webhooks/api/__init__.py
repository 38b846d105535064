"""The ``/v1`` API: every module here that defines ``bp`` (a Blueprint) is registered."""

from __future__ import annotations

import importlib
import pkgutil

from flask import Flask


def register_api(app: Flask) -> None:
    """Register every blueprint module of this package on ``app``."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        bp = getattr(module, "bp", None)
        if bp is not None:
            app.register_blueprint(bp)
