"""Logins: passwords compared in constant time, failed logins throttled per user name, and
sessions that expire.

Gradio's ``auth=`` has no lockout and keeps a login token for as long as the app runs. A name
with ``MAX_FAILURES`` wrong passwords in a row is locked for ``LOCK_S`` seconds (doubling with
each further lockout, up to an hour); during a lockout even the right password is refused with
HTTP 429 and a message saying when to try again. Tokens older than the session length stop
working (the login page comes back).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_FAILURES = 5
LOCK_S = 30.0
MAX_LOCK_S = 3600.0


@dataclass
class _Record:
    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0


@dataclass
class LoginGuard:
    """Checks a name and password against the users, throttling repeated failures."""

    users: dict[str, tuple[str, str]]  # name -> (password, role)
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, username: str) -> float:
        """Seconds until ``username`` may try again (0 when it may now)."""
        with self._lock:
            record = self._records.get(username)
            return max(0.0, record.locked_until - self.clock()) if record else 0.0

    def __call__(self, username: str, password: str) -> bool:
        wait = self.wait_s(username)
        if wait > 0:
            from fastapi import HTTPException

            raise HTTPException(
                status_code=429,
                detail=f"Too many failed logins for {username!r}; try again in {wait:.0f} s.",
            )
        entry = self.users.get(username)
        # Compare against something even for an unknown name, so timing tells nothing.
        expected = entry[0] if entry else "\x00unknown user\x00"
        ok = hmac.compare_digest(password.encode(), expected.encode()) and entry is not None
        with self._lock:
            record = self._records.setdefault(username, _Record())
            if ok:
                record.failures = 0
                return True
            record.failures += 1
            if record.failures >= MAX_FAILURES:
                record.lockouts += 1
                record.failures = 0
                record.locked_until = self.clock() + min(
                    MAX_LOCK_S, LOCK_S * 2 ** (record.lockouts - 1)
                )
        return False


class ExpiringTokens(dict[str, Any]):
    """Gradio's login tokens (token -> user name), each valid for ``ttl_s`` after the login."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.ttl_s, self.clock = ttl_s, clock
        self._born: dict[str, float] = {}

    def __setitem__(self, token: str, user: Any) -> None:
        self._born[token] = self.clock()
        super().__setitem__(token, user)

    def _expired(self, token: object) -> bool:
        born = self._born.get(token)  # type: ignore[call-overload]
        if born is not None and self.clock() - born > self.ttl_s:
            super().pop(token, None)  # type: ignore[call-overload]
            self._born.pop(token, None)  # type: ignore[call-overload]
            return True
        return False

    def get(self, token: Any, default: Any = None) -> Any:
        return default if self._expired(token) else super().get(token, default)

    def __getitem__(self, token: str) -> Any:
        if self._expired(token):
            raise KeyError(token)
        return super().__getitem__(token)

    def __contains__(self, token: object) -> bool:
        return not self._expired(token) and super().__contains__(token)


def expire_sessions(app: Any, hours: float) -> None:
    """Make a launched Gradio app's login tokens expire ``hours`` after each login."""
    server = getattr(app, "server_app", None) or getattr(app, "app", None)
    if server is not None and hasattr(server, "tokens"):
        tokens = ExpiringTokens(hours * 3600)
        for token, user in dict(server.tokens).items():
            tokens[token] = user
        server.tokens = tokens
