"""The dashboard's sessions: an API key given once at login, then a signed, HTTP-only cookie.

The cookie holds the key's SHA-256 (never the key), when the session started, and a random nonce, signed with
HMAC-SHA256 under the server's session secret; each request looks the digest up in the API's ``KeyRing``, so a
key that is removed ends its sessions too. Every form carries a CSRF token derived from the session's nonce
(HMAC under the same secret): a form posted from another site, or with another session's token, is refused.
The cookie is ``SameSite=Strict`` as well, and ``Secure`` when the API speaks HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "SessionCodec"]

COOKIE = "mg_session"


@dataclass(frozen=True, slots=True)
class Session:
    digest: str  # the key's SHA-256 (hex)
    started: int  # epoch seconds
    nonce: str

    def csrf(self, secret: bytes) -> str:
        return _sign(secret, b"csrf|" + self.nonce.encode())


def _sign(secret: bytes, data: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, data, hashlib.sha256).digest()).decode().rstrip("=")


class SessionCodec:
    """Makes and reads session cookies; ``lifetime_s``: a session ends so long after login."""

    def __init__(self, secret: bytes | None = None, *, lifetime_s: float = 12 * 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret or secrets.token_bytes(32)  # none configured: sessions end with the process
        self.lifetime_s, self._clock = lifetime_s, clock

    def new(self, digest: str) -> tuple[Session, str]:
        """A session for the key of ``digest``, and its cookie value."""
        session = Session(digest, int(self._clock()), secrets.token_urlsafe(16))
        body = f"{session.digest}.{session.started}.{session.nonce}"
        return session, f"{body}.{_sign(self.secret, body.encode())}"

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie value, or None when it is missing, forged, malformed or expired."""
        if not value or len(value) > 300:
            return None
        body, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature, _sign(self.secret, body.encode())):
            return None
        digest, started, nonce = (body.split(".") + ["", "", ""])[:3]
        if not started.isdigit() or len(digest) != 64:
            return None
        if not 0 <= self._clock() - int(started) < self.lifetime_s:
            return None
        return Session(digest, int(started), nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token or "", session.csrf(self.secret))
