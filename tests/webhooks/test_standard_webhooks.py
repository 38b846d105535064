"""Standard Webhooks verification: signatures, rotation, tolerance, and what is refused."""

from __future__ import annotations

import pytest

from worker.standard_webhooks import WebhookVerificationError, sign, signed_headers, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_b3RoZXItc2VjcmV0LWZvci1yb3RhdGlvbg=="
BODY = b'{"id":"evt_1","type":"contract.created"}'
NOW = 1_795_255_200


def test_roundtrip() -> None:
    """A delivery signed with the secret verifies."""
    verified = verify(signed_headers(SECRET, "msg_1", NOW, BODY), BODY, [SECRET], now=NOW)
    assert verified.delivery_id == "msg_1" and verified.timestamp == NOW


def test_rotation_accepts_any_configured_secret() -> None:
    """With two secrets configured, a delivery signed with either verifies."""
    assert verify(signed_headers(OTHER, "msg_2", NOW, BODY), BODY, [SECRET, OTHER], now=NOW)


def test_several_signatures_in_header() -> None:
    """A header carrying several v1 signatures verifies when one of them matches."""
    headers = signed_headers(SECRET, "msg_3", NOW, BODY)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"] + " v2,zzz"
    assert verify(headers, BODY, [SECRET], now=NOW)


def test_header_names_are_case_insensitive() -> None:
    """Header names are matched without regard to case."""
    headers = {k.upper(): v for k, v in signed_headers(SECRET, "msg_4", NOW, BODY).items()}
    assert verify(headers, BODY, [SECRET], now=NOW)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: (h, b + b" "), "no signature matches"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW - 301)}, b), "tolerance"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 301)}, b), "tolerance"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc"}, b), "no v1 signature"),
        (lambda h, b: ({**h, "webhook-signature": sign(OTHER, "msg_5", NOW, b)}, b), "no signature matches"),
    ],
    ids=["tampered-body", "other-id", "stale", "future", "bad-timestamp", "no-signature", "wrong-version", "wrong-secret"],
)
def test_rejections(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    """Tampering, stale or future timestamps, missing headers and foreign secrets are refused."""
    headers, body = mutate(signed_headers(SECRET, "msg_5", NOW, BODY), BODY)
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(headers, body, [SECRET], now=NOW)


def test_no_secret_configured_refuses() -> None:
    """Without WEBHOOK_SECRETS nothing verifies."""
    with pytest.raises(WebhookVerificationError, match="no webhook secret"):
        verify(signed_headers(SECRET, "m", NOW, BODY), BODY, [], now=NOW)
