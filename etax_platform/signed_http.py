"""Signed requests to external providers (SMS gateway, real-name authority).

Every request carries `X-Etax-Timestamp` (unix seconds), `X-Etax-Nonce` and
`X-Etax-Signature`: hex HMAC-SHA256 with the shared key over
"POST\\n<path>\\n<timestamp>\\n<nonce>\\n<hex SHA-256 of the body>", so the provider can
refuse forged and replayed requests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from etax_platform.observability import request_id


def request_signature(key: bytes, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    text = f"POST\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_headers(key: bytes, path: str, body: bytes, unix_time: float) -> dict[str, str]:
    timestamp = str(int(unix_time))
    nonce = secrets.token_hex(16)
    return {
        "content-type": "application/json",
        "x-etax-timestamp": timestamp,
        "x-etax-nonce": nonce,
        "x-etax-signature": request_signature(key, path, timestamp, nonce, body),
        "x-request-id": request_id.get(),
    }
