"""A fake session-cookie credential source, standing in for the dashboard's (a later task).

It shows what the authentication middleware's hook expects of such a source: a cookie names
an agent, and a mutating request must also carry the matching CSRF header.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from server.surfaces.http.auth import Identity

COOKIE = "pvm_session"
CSRF_HEADER = "x-csrf-token"


class FakeSessionCookies:
    def __init__(self, sessions: dict[str, tuple[str, str]]) -> None:
        """``sessions``: cookie value -> (agent id, its CSRF token)."""
        self.sessions = sessions

    async def identify(self, headers: Headers) -> Identity | None:
        cookies = dict(
            part.strip().split("=", 1)
            for part in headers.get("cookie", "").split(";")
            if "=" in part
        )
        found = self.sessions.get(cookies.get(COOKIE, ""))
        if found is None:
            return None
        agent, csrf = found
        return Identity(agent, "session", csrf_check=lambda h: h.get(CSRF_HEADER) == csrf)
