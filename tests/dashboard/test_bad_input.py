"""The dashboard refuses bad input with a page that says why: never a 500, never SQL on the page."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from billing_core.errors import InvalidInput
from tests.conftest import TEST_API_KEY
from tests.dashboard.conftest import csrf_of
from worker import ops
from worker.persistence.contracts import ContractRow

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def contract(app: Any) -> str:
    """Store one contract with two custom properties and return its id."""
    with Session(app.extensions["marketsync"].engine) as session:
        session.add(ContractRow(id="ctr_1", source="contracts", external_id="c-1", marketplace="aws",
                                custom_properties={"crm_id": "A-1", "region": "emea"},
                                created_at=NOW, updated_at=NOW))
        session.commit()
    return "ctr_1"


def _stored(app: Any) -> dict[str, Any]:
    with Session(app.extensions["marketsync"].engine) as session:
        return dict(session.get(ContractRow, "ctr_1").custom_properties)


def _post_properties(ops_client: Any, data: dict[str, Any]) -> Any:
    token = csrf_of(ops_client.get("/ops/contracts/ctr_1").get_data(as_text=True))
    return ops_client.post("/ops/contracts/ctr_1/properties", data={"csrf_token": token, **data})


def test_properties_form_refuses_a_long_key_posted_back(ops_client: Any, app: Any, contract: str) -> None:
    """A 5,000-character key sent as an existing property is refused with 400 and nothing is stored."""
    key = "k" * 5000
    answer = _post_properties(ops_client, {"key": [key], f"value:{key}": "x"})
    assert answer.status_code == 400
    assert "keys must be 1 to 100 characters" in answer.get_data(as_text=True).lower()
    assert _stored(app) == {"crm_id": "A-1", "region": "emea"}


def test_properties_form_refuses_500_keys(ops_client: Any, app: Any, contract: str) -> None:
    """Five hundred properties in one form are refused with 400 and nothing is stored."""
    keys = [f"k{i}" for i in range(500)]
    answer = _post_properties(ops_client, {"key": keys, **{f"value:{k}": "v" for k in keys}})
    assert answer.status_code == 400 and "at most 100 properties" in answer.get_data(as_text=True).lower()
    assert _stored(app) == {"crm_id": "A-1", "region": "emea"}


def test_properties_form_refuses_passing_the_total_limit(ops_client: Any, app: Any, contract: str) -> None:
    """Adding a property to a contract that already has 100 is refused with 400, as the API does."""
    with Session(app.extensions["marketsync"].engine) as session:
        row = session.get(ContractRow, "ctr_1")
        row.custom_properties = {f"k{i}": "v" for i in range(100)}
        session.add(row)
        session.commit()
    answer = _post_properties(ops_client, {"new_key": "one_more", "new_value": "x"})
    assert answer.status_code == 400 and "at most 100 properties" in answer.get_data(as_text=True).lower()


def test_properties_form_refuses_a_long_value(ops_client: Any, app: Any, contract: str) -> None:
    """A value over 1,000 characters for an existing property is refused with 400 and nothing is stored."""
    answer = _post_properties(ops_client, {"key": ["crm_id"], "value:crm_id": "x" * 1001})
    assert answer.status_code == 400 and "longer than 1000 characters" in answer.get_data(as_text=True).lower()
    assert _stored(app) == {"crm_id": "A-1", "region": "emea"}


@pytest.mark.parametrize("target", ["/ops/\r\nSet-Cookie: x=1", "/ops/contracts\n", "/ops/%0d%0a", "/ops/\x00",
                                    "//evil.example/ops", "/ops/" + "a" * 5000])
def test_login_next_with_control_characters_goes_to_the_overview(client: Any, target: str) -> None:
    """A next= target with CR/LF or other control characters is replaced by the overview, never a 500."""
    page = client.get("/ops/login", query_string={"next": target})
    assert page.status_code == 200
    answer = client.post("/ops/login", data={"api_key": TEST_API_KEY, "next": target,
                                             "csrf_token": csrf_of(page.get_data(as_text=True))})
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert "\r" not in location and "\n" not in location
    if not target.isprintable() or len(target) > 2000 or target.startswith("//"):
        assert location == "/ops/"


@pytest.mark.parametrize("job_id", ["bad id with spaces", "a/b/c", "x" * 300, "report:ctr_1:2026"])
def test_retrying_a_job_id_rq_refuses_is_a_message(ops_client: Any, job_id: str) -> None:
    """Retrying a job id rq refuses (or that is not failed) answers with a message on the failed jobs page."""
    token = csrf_of(ops_client.get("/ops/jobs/failed").get_data(as_text=True))
    answer = ops_client.post(f"/ops/jobs/failed/urgent/{job_id}/retry", data={"csrf_token": token})
    assert answer.status_code == 302
    page = ops_client.get("/ops/jobs/failed").get_data(as_text=True)
    assert "is no longer in the failed jobs of urgent" in page


def _integer_overflow() -> OperationalError:
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT sum(v) FROM (SELECT 9223372036854775807 AS v UNION ALL SELECT :one)"),
                         {"one": 1})
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("SQLite summed past 2**63 without an error")


def test_invoice_failure_shows_a_sentence_without_sql() -> None:
    """A database error computing the invoice is shown as a sentence, without SQL or parameters."""
    exc = _integer_overflow()
    assert "[SQL:" in str(exc)
    shown = ops.invoice_failure(exc)
    assert "SELECT" not in shown and "[SQL" not in shown and "parameters" not in shown and "sqlite3" not in shown
    assert shown.startswith("the upcoming invoice could not be computed")
    assert ops.invoice_failure(InvalidInput("timeframe_end: must be after timeframe_start")).endswith(
        "timeframe_end: must be after timeframe_start")


def test_stored_errors_are_shown_without_sql() -> None:
    """An error text stored with SQLAlchemy's SQL and parameters is shown without them."""
    stored = f"OperationalError: {_integer_overflow()}"
    assert ops.public_error(stored) == "OperationalError: integer overflow"
    assert ops.public_error("") == "" and len(ops.public_error("x" * 1000)) <= 303
