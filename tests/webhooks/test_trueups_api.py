"""``/v1/trueups``: preview a CSV of manual true-ups, confirm it with the preview's digest, list what was applied."""

from __future__ import annotations

from typing import Any

import pytest

from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import SyncEnv, build_env, map_contract, setup_billing, start_of_test_window


@pytest.fixture
def env(app: Any, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    environment = build_env("aws", app.extensions["marketsync"].engine, emulator_servers["aws"])
    environment.control("POST", "reset")
    setup_billing(environment.engine)
    return environment


def test_preview_confirm_and_list(client: Any, auth_headers: dict[str, str], env: SyncEnv) -> None:
    """The preview answers the digest and changes nothing; confirming with it applies the file once; a second
    confirmation applies nothing; the list shows the adjustment with its pending report."""
    contract, _ = map_contract(env, start=start_of_test_window())
    csv = f"contract,dimension,units,reason\n{contract},usage_cost,12,invoice 4411 credit\n"

    preview = client.post("/v1/trueups/preview", headers=auth_headers, json={"csv": csv})
    assert preview.status_code == 200, preview.json
    assert preview.json["ok"] and preview.json["counts"] == {"new": 1, "applied": 0, "already_applied": 0}
    assert preview.json["rows"][0]["contract_id"] == contract
    assert client.get("/v1/trueups", headers=auth_headers).json == {"data": []}

    digest = preview.json["digest"]
    confirmed = client.post("/v1/trueups", headers=auth_headers, json={"csv": csv, "digest": digest})
    assert confirmed.status_code == 200, confirmed.json
    assert confirmed.json["counts"]["applied"] == 1 and len(confirmed.json["applied_ledger_ids"]) == 1
    again = client.post("/v1/trueups", headers=auth_headers, json={"csv": csv, "digest": digest})
    assert again.json["counts"] == {"new": 0, "applied": 0, "already_applied": 1}
    assert again.json["applied_ledger_ids"] == []

    [listed] = client.get("/v1/trueups", headers=auth_headers).json["data"]
    assert (listed["contract_id"], listed["units"], listed["status"], listed["ledger_id"]) == (
        contract, 12, "pending", confirmed.json["applied_ledger_ids"][0])


def test_bad_files_are_refused_naming_every_error(client: Any, auth_headers: dict[str, str], env: SyncEnv) -> None:
    """A confirmation of a file with bad rows is a 400 listing each line and column, and applies nothing; a file
    that is not the one previewed is a 409; a body without the digest is a 400 naming it."""
    contract, _ = map_contract(env, start=start_of_test_window())
    csv = f"contract,dimension,units,reason\n{contract},usage_cost,0,zero\nctr_nope,usage_cost,1,who\n"
    preview = client.post("/v1/trueups/preview", headers=auth_headers, json={"csv": csv})
    assert preview.status_code == 200 and not preview.json["ok"]
    assert [(e["line"], e["column"]) for e in preview.json["errors"]] == [(2, "units"), (3, "contract")]

    refused = client.post("/v1/trueups", headers=auth_headers, json={"csv": csv, "digest": preview.json["digest"]})
    assert refused.status_code == 400
    assert "line 2, column units" in refused.json["detail"] and "line 3, column contract" in refused.json["detail"]
    assert [(e["field"], e["message"][:20]) for e in refused.json["validation_errors"]] == [
        ("csv.2.units", "'0' is not a whole n"), ("csv.3.contract", "no contract 'ctr_nop")]

    good = f"contract,dimension,units,reason\n{contract},usage_cost,1,fine\n"
    changed = client.post("/v1/trueups", headers=auth_headers, json={"csv": good, "digest": preview.json["digest"]})
    assert changed.status_code == 409 and "preview it again" in changed.json["detail"]
    missing = client.post("/v1/trueups", headers=auth_headers, json={"csv": good})
    assert missing.status_code == 400 and "digest" in missing.json["detail"]
    assert client.get("/v1/trueups", headers=auth_headers).json == {"data": []}
