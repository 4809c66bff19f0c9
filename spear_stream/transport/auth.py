"""Worker authentication: a challenge-response on the run token, and message tags under a per-session key.

The run token never travels. A session is opened by a three-message handshake on the worker's connection:

1. worker -> learner ``hello`` with a fresh client nonce;
2. learner -> worker ``challenge`` with a fresh server nonce (nothing secret: an unauthenticated peer learns no
   more than a random number);
3. worker -> learner ``auth`` with ``proof = HMAC(token, "auth|worker_id|client_nonce|server_nonce")``.

The learner checks the proof in constant time and derives the session key
``HMAC(token, "session|worker_id|client_nonce|server_nonce")``, as the worker does. From then on every message in
either direction carries ``mac = HMAC(session_key, canonical fields)``: a peer that knows neither the token nor the
key can neither inject control messages nor replay them into another session (fresh nonces), and the session is
bound to the connection's routing id (the learner's ROUTER refuses a second connection with an id in use, so a
live worker's pipe cannot be taken over). Group payloads are not tagged, only their header (kind, ids, sequence,
row count, payload size): the routing id binds them to the authenticated connection, and hashing every byte of a
50 MB group would cost as much as receiving it. For links beyond the loopback, CURVE encryption
(``transport.curve``) protects payloads in transit as well.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any


def nonce() -> str:
    return secrets.token_hex(16)


def proof(token: bytes, worker_id: int, client_nonce: str, server_nonce: str) -> str:
    message = f"auth|{worker_id}|{client_nonce}|{server_nonce}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def session_key(token: bytes, worker_id: int, client_nonce: str, server_nonce: str) -> bytes:
    message = f"session|{worker_id}|{client_nonce}|{server_nonce}".encode()
    return hmac.new(token, message, hashlib.sha256).digest()


def tag(key: bytes, fields: dict[str, Any]) -> str:
    """The MAC of a message's fields (every field but ``mac``, in a canonical JSON form)."""
    body = json.dumps({k: v for k, v in fields.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def verify(key: bytes | None, fields: dict[str, Any]) -> bool:
    mac = fields.get("mac")
    return key is not None and isinstance(mac, str) and hmac.compare_digest(mac, tag(key, fields))
