"""Browser sessions, kept on the server (etax_platform.kv: in-process, or Redis shared by
web replicas).

The browser holds only an opaque random id in an HttpOnly cookie; the record holds the CSRF
token, the platform session (access and refresh tokens), and the state of flows in
progress (a login challenge, a face ticket). Records are stored under a hash of the id, so
a copy of the store gives no usable cookie.

A request loads the record once, changes top-level keys, and saves only the keys it
changed, merged into whatever is stored by then: a page's poll and a form post of the same
browser do not undo each other's changes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from etax_platform.kv import KeyValueStore

_MISSING = object()


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _key(session_id: str) -> str:
    return "web:session:" + hashlib.sha256(session_id.encode()).hexdigest()


class WebSession:
    """One browser's record: a mapping of top-level keys to JSON values."""

    def __init__(self, session_id: str, data: dict[str, Any], *, new: bool = False) -> None:
        self.session_id = session_id
        self._data = data
        self._changed: dict[str, Any] = {}
        self.new = new
        self.ended = False

    @property
    def csrf_token(self) -> str:
        return str(self._data["csrf"])

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._changed[key] = value

    def pop(self, key: str) -> Any:
        value = self._data.pop(key, None)
        self._changed[key] = _MISSING
        return value

    def keys(self) -> Iterator[str]:
        return iter(list(self._data))

    @property
    def changed(self) -> bool:
        return bool(self._changed) or self.new

    def _merge_into(self, stored: dict[str, Any]) -> dict[str, Any]:
        merged = dict(stored)
        for key, value in self._changed.items():
            if value is _MISSING:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged


class SessionStore:
    def __init__(self, store: KeyValueStore, idle: timedelta) -> None:
        self._store = store
        self._idle = idle

    def new(self) -> WebSession:
        return WebSession(secrets.token_urlsafe(32), {"csrf": secrets.token_urlsafe(32)}, new=True)

    def load(self, session_id: str | None) -> WebSession | None:
        if not session_id or len(session_id) > 128:
            return None
        found = self._store.get(_key(session_id))
        if found is None:
            return None
        return WebSession(session_id, json.loads(found.value))

    def save(self, session: WebSession) -> None:
        """Writes the changed keys into the stored record (a new session: all of it)."""
        if session.ended or not session.changed:
            return
        key = _key(session.session_id)
        if session.new:
            self._store.create(key, _dump(session._data), self._idle)
        else:

            def change(current: bytes | None) -> tuple[bytes | None, None]:
                if current is None:
                    return None, None  # ended meanwhile (logout in another tab): stays ended
                return _dump(session._merge_into(json.loads(current))), None

            self._store.update(key, change, self._idle)
        session._changed.clear()
        session.new = False

    def rotate(self, session: WebSession) -> WebSession:
        """A new id (and CSRF token) for the same record: at every sign-in, so an id
        planted before it (session fixation) is worth nothing after it."""
        found = self._store.get(_key(session.session_id))
        stored = json.loads(found.value) if found else session._data
        data = session._merge_into(stored)  # what other requests saved meanwhile, too
        data["csrf"] = secrets.token_urlsafe(32)
        self.end(session)
        fresh = WebSession(secrets.token_urlsafe(32), data, new=True)
        return fresh

    def end(self, session: WebSession) -> None:
        self._store.delete(_key(session.session_id))
        session.ended = True

    def reload(self, session: WebSession) -> dict[str, Any]:
        """The record as stored now (another request may have changed it)."""
        found = self._store.get(_key(session.session_id))
        return json.loads(found.value) if found else {}

    def try_lock(self, session: WebSession, name: str, ttl: timedelta) -> bool:
        """A short lock on one action of one session (a token refresh)."""
        created = self._store.create(f"{_key(session.session_id)}:{name}", b"1", ttl)
        return created is not None

    def unlock(self, session: WebSession, name: str) -> None:
        self._store.delete(f"{_key(session.session_id)}:{name}")
