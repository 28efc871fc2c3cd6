"""Forms protected against cross-site request forgery: signed tokens bound to a cookie.

Design notes:

- **Signed double submit.** Each browser gets a random session id in a cookie (HttpOnly,
  SameSite=Strict, scoped to the dashboard's path); each form carries a token that is an
  HMAC, under the app's secret, of that id, the action, its target (a task id, a queue)
  and the time it was issued. A POST is accepted only if its token matches its own cookie,
  action and target and is younger than ``max_age``: another site can make a browser send
  the cookie (SameSite stops most of that already) but cannot read a token, and a token
  copied from one form does nothing on another. Rejected: a server-side token store (state
  shared between replicas), and checking ``Origin`` alone (proxies rewrite ``Host``, so a
  strict comparison refuses legitimate posts; ``Sec-Fetch-Site: cross-site`` is refused,
  which is never wrong).
- **The secret** is random per app unless given: replicas behind a load balancer need the
  same one, or a form served by one replica is refused by another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

__all__ = ["COOKIE", "FIELD", "Csrf"]

#: The cookie holding the browser's session id, and the form field holding the token.
COOKIE = "tasker_dashboard_session"
FIELD = "csrf_token"

_MIN_SECRET = 16


class Csrf:
    """Issues and checks the tokens of one dashboard app.

    Args:
        secret: the HMAC key (at least 16 bytes), or None for a random one.
        max_age: seconds a token stays valid.

    Raises:
        ValueError: for a secret shorter than 16 bytes (its length is named, never its
            value).
        TypeError: for a secret that is neither ``str`` nor ``bytes``.
    """

    __slots__ = ("_key", "max_age")

    def __init__(self, secret: str | bytes | None, *, max_age: float = 12 * 3600) -> None:
        if secret is None:
            key = secrets.token_bytes(32)
        elif isinstance(secret, str | bytes):
            key = secret.encode() if isinstance(secret, str) else bytes(secret)
        else:
            raise TypeError(
                "tasker.dashboard.app(): secret must be str or bytes,"
                f" got a {type(secret).__name__}"
            )
        if len(key) < _MIN_SECRET:
            raise ValueError(
                f"tasker.dashboard.app(): secret must be at least {_MIN_SECRET} bytes long,"
                f" got {len(key)}"
            )
        self._key = key
        self.max_age = max_age

    @staticmethod
    def new_session() -> str:
        """A fresh random session id for the cookie."""
        return secrets.token_urlsafe(24)

    def token(self, session: str, action: str, target: str, *, now: float | None = None) -> str:
        """The token a form for ``action`` on ``target`` carries, for this ``session``."""
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._sign(session, action, target, issued)}"

    def check(
        self,
        session: str | None,
        action: str,
        target: str,
        token: str | None,
        *,
        now: float | None = None,
    ) -> bool:
        """Whether ``token`` was issued by this app for ``session``, ``action`` and
        ``target``, less than ``max_age`` ago. Missing parts are never valid."""
        if not session or not token:
            return False
        issued_text, dot, signature = token.partition(".")
        if not dot or not issued_text.isdigit():
            return False
        issued = int(issued_text)
        age = (time.time() if now is None else now) - issued
        if not -60 <= age <= self.max_age:  # a minute of clock skew between replicas
            return False
        expected = self._sign(session, action, target, issued)
        return hmac.compare_digest(expected.encode(), signature.encode())

    def _sign(self, session: str, action: str, target: str, issued: int) -> str:
        # JSON: two different tuples never sign the same message, whatever they contain.
        message = json.dumps([session, action, target, issued]).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def __repr__(self) -> str:
        return "<tasker.dashboard Csrf (secret not shown)>"
