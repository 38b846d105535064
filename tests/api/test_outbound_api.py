"""``/v1/webhook_endpoints`` and ``/v1/alerts`` refuse bad input with a 400 naming the field (and
change nothing), answer 404 for unknown ids, and never show an endpoint's secret after creation."""

from __future__ import annotations

from typing import Any

import pytest


def _endpoint(client: Any, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/webhook_endpoints", json={"url": "https://hooks.example.test/a", **body}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


@pytest.mark.parametrize("body,field", [
    ({}, "url"),
    ({"url": "ftp://x"}, "url"),
    ({"url": "https://x.test", "payload_style": "fancy"}, "payload_style"),
    ({"url": "https://x.test", "enabled_event_types": ["subscription.nope"]}, "enabled_event_types"),
    ({"url": "https://x.test", "enabled_event_types": "invoice.issued"}, "enabled_event_types"),
    ({"url": "https://x.test", "secret": "mine"}, "secret"),
], ids=["no-url", "not-http", "style", "unknown-type", "not-a-list", "unknown-field"])
def test_endpoint_bad_input_names_the_field(client: Any, auth_headers: dict[str, str], body: dict[str, Any],
                                            field: str) -> None:
    """A bad endpoint body is a 400 naming its field, and nothing is stored."""
    answer = client.post("/v1/webhook_endpoints", json=body, headers=auth_headers)
    assert answer.status_code == 400 and field in answer.get_json()["detail"], answer.get_json()
    assert client.get("/v1/webhook_endpoints", headers=auth_headers).get_json()["data"] == []


def test_secret_is_shown_once(client: Any, auth_headers: dict[str, str]) -> None:
    """The secret is in the create answer only: not in retrieve, list, update, enable or disable answers."""
    created = _endpoint(client, auth_headers, enabled_event_types=["invoice.issued"])
    secret, eid = created["secret"], created["id"]
    answers = [client.get(f"/v1/webhook_endpoints/{eid}", headers=auth_headers),
               client.get("/v1/webhook_endpoints", headers=auth_headers),
               client.put(f"/v1/webhook_endpoints/{eid}", json={"payload_style": "standard"}, headers=auth_headers),
               client.post(f"/v1/webhook_endpoints/{eid}/disable", headers=auth_headers),
               client.post(f"/v1/webhook_endpoints/{eid}/enable", headers=auth_headers)]
    for answer in answers:
        assert answer.status_code == 200 and secret not in answer.get_data(as_text=True)
    assert answers[2].get_json()["enabled_event_types"] == ["invoice.issued"]  # omitted: unchanged
    bad = client.put(f"/v1/webhook_endpoints/{eid}", json={"url": "nope"}, headers=auth_headers)
    assert bad.status_code == 400 and "url" in bad.get_json()["detail"]
    assert client.get(f"/v1/webhook_endpoints/{eid}", headers=auth_headers).get_json()["url"].endswith("/a")
    assert client.delete(f"/v1/webhook_endpoints/{eid}", headers=auth_headers).status_code == 204
    for method, path in (("get", ""), ("put", ""), ("delete", ""), ("post", "/enable"), ("get", "/deliveries"),
                         ("post", "/deliveries/1/replay")):
        answer = getattr(client, method)(f"/v1/webhook_endpoints/{eid}{path}", json={}, headers=auth_headers)
        assert answer.status_code == 404, (method, path)


@pytest.mark.parametrize("path,body,field", [
    ("/v1/alerts/subscription_id/sub_missing", {"type": "cost_exceeded", "thresholds": [{"value": 1}]}, None),
    ("/v1/alerts/plan_id/plan_missing", {"type": "cost_exceeded", "thresholds": [{"value": 1}]}, None),
    ("/v1/alerts/customer_id/cus_missing", {"type": "credit_balance_depleted", "currency": "USD"}, None),
    ("/v1/alerts/external_customer_id/nobody", {"type": "credit_balance_depleted", "currency": "USD"}, None),
], ids=["subscription", "plan", "customer", "external-customer"])
def test_alert_on_something_missing_is_404(client: Any, auth_headers: dict[str, str], path: str,
                                           body: dict[str, Any], field: str | None) -> None:
    """An alert for an unknown subscription, plan or customer is a 404."""
    assert client.post(path, json=body, headers=auth_headers).status_code == 404


def test_alert_bad_input_names_the_field(client: Any, auth_headers: dict[str, str]) -> None:
    """Bad alert bodies are 400s naming the field; unknown alerts are 404s."""
    customer = client.post("/v1/customers", json={"name": "A", "email": "a@x.test", "external_customer_id": "a"},
                           headers=auth_headers).get_json()
    base = f"/v1/alerts/customer_id/{customer['id']}"
    for body, field in (({"type": "usage_exceeded", "currency": "USD"}, "type"),
                        ({"type": "credit_balance_dropped"}, "currency"),
                        ({"type": "credit_balance_dropped", "currency": "USD", "thresholds": [{"value": "x"}]},
                         "thresholds"),
                        ({"type": "credit_balance_dropped", "currency": "USD", "thresholds": [{"value": -1}]},
                         "thresholds"),
                        ({"type": "credit_balance_dropped", "currency": "USD", "grouping_keys": ["a"]},
                         "grouping_keys"),
                        ({"type": "credit_balance_dropped", "currency": "USD", "colour": 1}, "colour")):
        answer = client.post(base, json=body, headers=auth_headers)
        assert answer.status_code == 400 and field in answer.get_json()["detail"], (body, answer.get_json())
    assert client.get("/v1/alerts", headers=auth_headers).get_json()["data"] == []
    created = client.post(base, json={"type": "credit_balance_dropped", "currency": "USD",
                                      "thresholds": [{"value": 5}]}, headers=auth_headers)
    assert created.status_code == 201 and created.get_json()["customer"]["id"] == customer["id"]
    listed = client.get("/v1/alerts?external_customer_id=a", headers=auth_headers).get_json()["data"]
    assert [a["id"] for a in listed] == [created.get_json()["id"]]
    for method, path in (("get", ""), ("put", ""), ("post", "/enable"), ("post", "/disable"), ("delete", "")):
        answer = getattr(client, method)(f"/v1/alerts/alert_missing{path}", json={"thresholds": [{"value": 1}]},
                                         headers=auth_headers)
        assert answer.status_code == 404, (method, path)


def test_parallel_changes_all_survive(live_server: Any, auth_headers: dict[str, str]) -> None:
    """Concurrent changes of different fields of one endpoint, and of one alert, are all kept (locked read-modify-write)."""
    import threading

    import requests

    base = f"{live_server.url}/v1"
    endpoint = requests.post(f"{base}/webhook_endpoints", json={"url": "https://hooks.example.test/a"},
                             headers=auth_headers, timeout=10).json()
    customer = requests.post(f"{base}/customers", json={"name": "A", "email": "a@x.test"}, headers=auth_headers,
                             timeout=10).json()
    alert = requests.post(f"{base}/alerts/customer_id/{customer['id']}", json={
        "type": "credit_balance_dropped", "currency": "USD", "thresholds": [{"value": 1}]},
        headers=auth_headers, timeout=10).json()
    calls = [("put", f"/webhook_endpoints/{endpoint['id']}", {"payload_style": "standard"}),
             ("put", f"/webhook_endpoints/{endpoint['id']}", {"enabled_event_types": ["invoice.issued"]}),
             ("put", f"/webhook_endpoints/{endpoint['id']}", {"url": "https://hooks.example.test/b"}),
             ("post", f"/webhook_endpoints/{endpoint['id']}/disable", None),
             ("put", f"/alerts/{alert['id']}", {"thresholds": [{"value": 2}, {"value": 3}]}),
             ("post", f"/alerts/{alert['id']}/disable", None)] * 3
    barrier = threading.Barrier(len(calls))
    codes: list[int] = []

    def call(method: str, path: str, body: Any) -> None:
        barrier.wait()
        codes.append(requests.request(method, base + path, json=body, headers=auth_headers, timeout=30).status_code)

    threads = [threading.Thread(target=call, args=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * len(calls)
    final = requests.get(f"{base}/webhook_endpoints/{endpoint['id']}", headers=auth_headers, timeout=10).json()
    assert (final["payload_style"], final["enabled_event_types"], final["url"], final["enabled"]) == (
        "standard", ["invoice.issued"], "https://hooks.example.test/b", False)
    got = requests.get(f"{base}/alerts/{alert['id']}", headers=auth_headers, timeout=10).json()
    assert ([t["value"] for t in got["thresholds"]], got["enabled"]) == ([2, 3], False)
