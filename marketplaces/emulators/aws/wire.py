"""The AWS wire format: JSON 1.1 and Smithy RPC v2 CBOR answers, AWS errors, times, signed SNS envelopes."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Response


MAX_QUANTITY = 2_147_483_647
SELLER_ACCOUNT = "999988887777"
LICENSE_ACCOUNT = "294406891311"
MARKETPLACE_SNS_ACCOUNT = "287250355862"
CERT_PATH = "/_emulator/sns/cert.pem"


_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")


class AwsError(Exception):
    """A request-level error answered in the AWS JSON error shape."""

    def __init__(self, type_: str, message: str, status: int = 400):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.status = status


# --- time helpers --------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime, millis: bool = False) -> str:
    dt = _utc(dt)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime:
    return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


def _parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except ValueError:
            return _parse_iso(value)
    raise AwsError("ValidationException", f"invalid Timestamp {value!r}")


def _hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


# --- a small CBOR codec (RFC 8949 subset botocore uses) --------------------------------------


def cbor_encode(value: Any) -> bytes:
    """Encode ``value`` as CBOR (maps, arrays, strings, numbers, booleans, null, datetimes)."""
    out = bytearray()
    _cbor_put(out, value)
    return bytes(out)


def _cbor_head(out: bytearray, major: int, length: int) -> None:
    if length < 24:
        out.append((major << 5) | length)
    elif length < 0x100:
        out += bytes([(major << 5) | 24, length])
    elif length < 0x10000:
        out.append((major << 5) | 25)
        out += struct.pack(">H", length)
    elif length < 0x100000000:
        out.append((major << 5) | 26)
        out += struct.pack(">I", length)
    else:
        out.append((major << 5) | 27)
        out += struct.pack(">Q", length)


def _cbor_put(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _cbor_head(out, 0, value)
        else:
            _cbor_head(out, 1, -1 - value)
    elif isinstance(value, float):
        out.append(0xFB)
        out += struct.pack(">d", value)
    elif isinstance(value, datetime):
        out.append(0xC1)  # tag 1: epoch-based date/time
        _cbor_put(out, _utc(value).timestamp())
    elif isinstance(value, (bytes, bytearray)):
        _cbor_head(out, 2, len(value))
        out += value
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _cbor_head(out, 3, len(data))
        out += data
    elif isinstance(value, (list, tuple)):
        _cbor_head(out, 4, len(value))
        for item in value:
            _cbor_put(out, item)
    elif isinstance(value, Mapping):
        _cbor_head(out, 5, len(value))
        for key, item in value.items():
            _cbor_put(out, key)
            _cbor_put(out, item)
    else:
        raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


_BREAK = object()


def cbor_decode(data: bytes) -> Any:
    """Decode one CBOR data item (definite and indefinite lengths, tag 1 as datetime)."""
    stream = io.BytesIO(data)
    value = _cbor_get(stream)
    if value is _BREAK:
        raise ValueError("unexpected CBOR break")
    return value


def _cbor_read(stream: io.BytesIO, size: int) -> bytes:
    chunk = stream.read(size)
    if len(chunk) != size:
        raise ValueError("truncated CBOR")
    return chunk


def _cbor_length(stream: io.BytesIO, info: int) -> int | None:
    if info < 24:
        return info
    if info == 31:
        return None
    sizes = {24: 1, 25: 2, 26: 4, 27: 8}
    if info not in sizes:
        raise ValueError(f"bad CBOR additional info {info}")
    return int.from_bytes(_cbor_read(stream, sizes[info]), "big")


def _cbor_get(stream: io.BytesIO) -> Any:
    initial = _cbor_read(stream, 1)[0]
    major, info = initial >> 5, initial & 0x1F
    if initial == 0xFF:
        return _BREAK
    if major == 7:
        simple = {20: False, 21: True, 22: None, 23: None}
        if info in simple:
            return simple[info]
        formats = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}
        if info not in formats:
            raise ValueError(f"unsupported CBOR simple value {info}")
        fmt, size = formats[info]
        return struct.unpack(fmt, _cbor_read(stream, size))[0]
    length = _cbor_length(stream, info)
    if major == 0:
        return length
    if major == 1:
        return -1 - (length or 0)
    if major in (2, 3):
        if length is None:
            parts = []
            while (part := _cbor_get(stream)) is not _BREAK:
                parts.append(part)
            joined = b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)
        else:
            joined = _cbor_read(stream, length)
        return joined if major == 2 else joined.decode("utf-8")
    if major == 4:
        items = []
        while length is None or len(items) < length:
            item = _cbor_get(stream)
            if item is _BREAK:
                break
            items.append(item)
        return items
    if major == 5:
        mapping: dict[Any, Any] = {}
        count = 0
        while length is None or count < length:
            key = _cbor_get(stream)
            if key is _BREAK:
                break
            mapping[key] = _cbor_get(stream)
            count += 1
        return mapping
    if major == 6:
        tagged = _cbor_get(stream)
        if length == 1 and isinstance(tagged, (int, float)):
            return datetime.fromtimestamp(tagged, tz=timezone.utc)
        return tagged
    raise ValueError(f"bad CBOR major type {major}")


# --- SNS envelopes ----------------------------------------------------------------------------


_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)


def sns_string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """Build the canonical SNS string to sign for ``envelope`` (docs/marketplaces.md §2.8)."""
    names = _NOTIFICATION_FIELDS if envelope.get("Type") == "Notification" else _CONFIRMATION_FIELDS
    lines = []
    for name in names:
        if name in envelope and envelope[name] is not None:
            lines.append(f"{name}\n{envelope[name]}\n")
    return "".join(lines).encode("utf-8")


def sign_envelope(
    key: rsa.RSAPrivateKey, envelope: dict[str, Any], cert_url: str, version: str = "2"
) -> dict[str, Any]:
    """Return a copy of ``envelope`` signed with ``key`` (SignatureVersion 1 or 2)."""
    signed = dict(envelope)
    signed["SignatureVersion"] = str(version)
    signed["SigningCertURL"] = cert_url
    digest = hashes.SHA1() if str(version) == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(signed), padding.PKCS1v15(), digest)
    signed["Signature"] = base64.b64encode(signature).decode("ascii")
    return signed


# --- responses ---------------------------------------------------------------------------------


def _json_response(payload: Any) -> Response:
    return Response(
        json.dumps(payload, default=_json_default),
        status=200,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).timestamp()
    raise TypeError(type(value).__name__)


def _json_error(err: AwsError) -> Response:
    if err.type == "ServiceUnavailable":
        return Response("Service Unavailable", status=503, content_type="text/plain")
    return Response(
        json.dumps({"__type": err.type, "message": err.message}),
        status=err.status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _cbor_response(payload: Any, status: int) -> Response:
    return Response(
        cbor_encode(payload),
        status=status,
        content_type="application/cbor",
        headers={"smithy-protocol": "rpc-v2-cbor", "x-amzn-RequestId": str(uuid.uuid4())},
    )
