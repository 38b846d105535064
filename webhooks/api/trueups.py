"""``/v1/trueups``: manual true-ups from a CSV file — preview, then confirm with the preview's digest."""

from __future__ import annotations

from flask.typing import ResponseReturnValue
from pydantic import Field

from webhooks.api.common import Body, api_blueprint, engine, now, parse_body
from webhooks.api.openapi import documented
from webhooks.api.schemas import TrueupAnswer, TrueupList
from webhooks.errors import ApiError
from worker import trueups

bp = api_blueprint("trueups", __name__)


class TrueupFile(Body):
    csv: str = Field(max_length=trueups.MAX_FILE_CHARS, description="the file: a header naming contract, dimension, units, "
                     "reason, then one adjustment per line")


class TrueupConfirm(TrueupFile):
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="the digest its preview answered: the file "
                        "confirmed must be the file previewed")


@bp.post("/trueups/preview")
@documented(body=TrueupFile, response=TrueupAnswer)
def preview() -> ResponseReturnValue:
    """Read a true-up file against what is stored; change nothing. Every error names its line and column."""
    body = parse_body(TrueupFile)
    return trueups.as_dict(trueups.check(engine(), body.csv, now=now()))


@bp.post("/trueups")
@documented(body=TrueupConfirm, response=TrueupAnswer)
def confirm() -> ResponseReturnValue:
    """Apply a previewed file: its new adjustments become pending usage reports under the current hour.

    A file with any error applies nothing (400 listing every error); one that differs from its
    preview is a 409; adjustments an earlier confirmation applied are reported once, not again.
    """
    body = parse_body(TrueupConfirm)
    try:
        return trueups.as_dict(trueups.confirm(engine(), body.csv, digest=body.digest, now=now()))
    except trueups.TrueupRefused as exc:
        # Every error, each naming its line and column: csv.<line>.<column>.
        raise ApiError(400, "Request validation error", str(exc), extra={"validation_errors": [
            {"field": f"csv.{e.line}.{e.column}", "message": e.message} for e in exc.errors]}) from None


@bp.get("/trueups")
@documented(response=TrueupList)
def applied() -> ResponseReturnValue:
    """Return the latest applied adjustments (100, newest first) with the status of their report."""
    return {"data": trueups.history(engine())}
