"""The dashboard's true-up page: upload a CSV, see the preview (per-row errors name their line and column), confirm."""

from __future__ import annotations

import io
from typing import Any

from tests.conftest import TEST_API_KEY
from tests.dashboard.conftest import Seeded, csrf_of
from worker import ledger


def _upload(ops_client: Any, text: str) -> Any:
    token = csrf_of(ops_client.get("/ops/trueups").get_data(as_text=True))
    return ops_client.post("/ops/trueups/preview", content_type="multipart/form-data",
                           data={"csrf_token": token, "file": (io.BytesIO(text.encode()), "trueups.csv")})


def test_upload_preview_confirm(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """A good file previews as a table with a confirm button; confirming writes the pending true-up report once and
    the page lists it; the same file confirmed again applies nothing."""
    overview = ops_client.get("/ops/").get_data(as_text=True)
    assert 'href="/ops/trueups"' in overview
    text = f"contract,dimension,units,reason\n{seeded.acme},usage_cost,25,support credit 88\n"
    preview = _upload(ops_client, text)
    page = preview.get_data(as_text=True)
    assert preview.status_code == 200, page
    assert "support credit 88" in page and ">new<" in page and "Confirm: report 1 adjustment(s)" in page
    digest = page.split('name="digest" value="')[1].split('"')[0]

    # A browser sends the hidden field back with CRLF line breaks: the same file.
    confirm = {"csrf_token": csrf_of(page), "csv": text.replace("\n", "\r\n"), "digest": digest}
    done = ops_client.post("/ops/trueups/confirm", data=confirm, follow_redirects=True)
    page = done.get_data(as_text=True)
    assert done.status_code == 200 and "Applied 1 adjustment(s)" in page
    assert page.count("support credit 88") == 1  # the list of applied adjustments
    engine = app.extensions["marketsync"].engine
    rows = [r for r in ledger.ledger_rows(engine, seeded.acme) if r["kind"] == ledger.TRUEUP]
    assert [(r["quantity"], r["status"]) for r in rows] == [(25, "pending")]

    again = ops_client.post("/ops/trueups/confirm", data=confirm, follow_redirects=True).get_data(as_text=True)
    assert "Applied 0 adjustment(s)" in again and "1 were already applied" in again
    assert len([r for r in ledger.ledger_rows(engine, seeded.acme) if r["kind"] == ledger.TRUEUP]) == 1
    assert TEST_API_KEY not in again


def test_bad_rows_are_shown_with_line_and_column(ops_client: Any, seeded: Seeded) -> None:
    """Each bad row is listed with its line and column, the page answers 400 and offers no confirmation."""
    text = (f"contract,dimension,units,reason\n{seeded.acme},usage_cost,many,typo\n"
            f"{seeded.unmapped},usage_cost,3,not mapped\n")
    answer = _upload(ops_client, text)
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert "2 error(s)" in page and "Confirm:" not in page
    errors = page[page.index('aria-label="Errors"'):]
    assert '<td class="num">2</td><td class="mono">units</td>' in errors
    assert '<td class="num">3</td><td class="mono">contract</td>' in errors and "not mapped" in errors


def test_confirming_an_edited_file_is_refused(ops_client: Any, seeded: Seeded) -> None:
    """A confirmation whose file differs from the previewed one (its digest) applies nothing and says why."""
    text = f"contract,dimension,units,reason\n{seeded.acme},usage_cost,1,one\n"
    page = _upload(ops_client, text).get_data(as_text=True)
    answer = ops_client.post("/ops/trueups/confirm", data={"csrf_token": csrf_of(page), "csv": text + "\n",
                                                           "digest": "0" * 64})
    assert answer.status_code == 400 and "preview it again" in answer.get_data(as_text=True)
