"""Dashboard sessions: a person signs in once with an agent token and gets a cookie.

The cookie (``pvm_session``, HttpOnly, SameSite=Strict, Path=/) names a session kept in this
server's memory, keyed by the cookie value's sha256; the token itself is never kept, only its
hash, and the session ends when that agent's token is replaced or the agent removed, when it
has been idle for :data:`IDLE_S` or open for :data:`LIFETIME_S`, or at sign-out. A restart
forgets every session, which only costs signing in again.

The cookie is a credential the browser attaches by itself, so a request that changes something
must also prove it came from the dashboard's own pages: it carries the session's CSRF token in
the ``X-CSRF-Token`` header. The token is bound to the session and handed to the pages by
``GET /ui/session`` (a response no other site's page can read).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from server.surfaces.http.auth import Identity

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "IDLE_S",
    "LIFETIME_S",
    "DashboardSession",
    "SessionBook",
    "SessionCookies",
    "session_cookie",
]

COOKIE_NAME = "pvm_session"
CSRF_HEADER = "x-csrf-token"
IDLE_S = 8 * 3600.0
LIFETIME_S = 24 * 3600.0
MAX_SESSIONS = 10_000


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class DashboardSession:
    agent_id: str
    token_hash: str  # of the agent token it was opened with
    csrf_token: str
    opened_at: float
    used_at: float

    def csrf_matches(self, headers: Headers) -> bool:
        sent = headers.get(CSRF_HEADER, "")
        return bool(sent) and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


class SessionBook:
    """The open sessions. ``clock`` is monotonic seconds (a test passes its own)."""

    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        lifetime_s: float = LIFETIME_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, DashboardSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, agent_id: str, token_hash: str) -> tuple[str, DashboardSession]:
        """A new session for ``agent_id``: its cookie value (given out once) and the session."""
        now = self._clock()
        self._sessions = {k: s for k, s in self._sessions.items() if not self._expired(s, now)}
        if len(self._sessions) >= self.max_sessions:  # a flood of sign-ins: drop the stalest
            stalest = min(self._sessions, key=lambda key: self._sessions[key].used_at)
            del self._sessions[stalest]
        session_id = secrets.token_urlsafe(32)
        session = DashboardSession(agent_id, token_hash, secrets.token_urlsafe(32), now, now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def find(self, session_id: str) -> DashboardSession | None:
        """The live session this cookie value names (its idle time restarts), else ``None``."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.used_at = now
        return session

    def close(self, session_id: str) -> bool:
        return self._sessions.pop(_key(session_id), None) is not None

    def expires_in(self, session: DashboardSession) -> float:
        """Seconds until the session ends if it stays idle."""
        now = self._clock()
        return max(
            0.0, min(session.used_at + self.idle_s, session.opened_at + self.lifetime_s) - now
        )

    def _expired(self, session: DashboardSession, now: float) -> bool:
        return now - session.used_at >= self.idle_s or now - session.opened_at >= self.lifetime_s


def session_id_of(headers: Headers) -> str:
    """The session cookie's value, or ``""``."""
    return cookie_parser(headers.get("cookie", "")).get(COOKIE_NAME, "")


def session_cookie(value: str, *, max_age_s: int, secure: bool) -> str:
    """The ``Set-Cookie`` value; ``max_age_s=0`` clears it."""
    parts = [f"{COOKIE_NAME}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    parts.append(f"Max-Age={max_age_s}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class SessionCookies:
    """The dashboard's :class:`~server.surfaces.http.auth.CredentialSource`: the session
    cookie, as long as the token it was opened with is still the agent's."""

    def __init__(
        self, book: SessionBook, resolve_hash: Callable[[str], Awaitable[str | None]]
    ) -> None:
        self.book = book
        self._resolve_hash = resolve_hash

    async def session(self, headers: Headers) -> tuple[str, DashboardSession] | None:
        """The cookie's value and its live session, or ``None``."""
        session_id = session_id_of(headers)
        session = self.book.find(session_id)
        if session is None:
            return None
        if await self._resolve_hash(session.token_hash) != session.agent_id:
            self.book.close(session_id)  # the token was replaced or the agent removed
            return None
        return session_id, session

    async def identify(self, headers: Headers) -> Identity | None:
        found = await self.session(headers)
        if found is None:
            return None
        _, session = found
        return Identity(session.agent_id, "session", csrf_check=session.csrf_matches)
