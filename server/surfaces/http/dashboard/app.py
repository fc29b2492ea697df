"""The dashboard for people, at ``/`` and ``/ui/...`` on the same port as ``/mcp`` and the API.

Three things live here, nothing else:

- the page (``/``, and ``/ui/<anything>`` so a deep link reloads), a shell of plain HTML that
  loads ES modules from ``/ui/assets/`` (shipped in the package; xterm.js vendored);
- ``/ui/session``: ``POST`` a JSON ``{"token": ...}`` once to sign in (an HttpOnly,
  SameSite=Strict cookie comes back, with the session's CSRF token in the body), ``GET`` the
  signed-in agent and the CSRF token again (after a reload), ``DELETE`` to sign out;
- the headers that keep the pages to themselves: a Content-Security-Policy without inline
  scripts, no framing, no sniffing, no referrer.

Everything the pages show and do goes through ``/api/v1`` and the project WebSocket, as the
signed-in agent, so the same policy decides as for that agent's MCP calls. A page of another
site can neither sign someone in (the Origin is checked, and only JSON is taken) nor change
anything with the cookie (the API wants the CSRF header too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.core.agents import hash_token
from server.surfaces.http.auth import CREATE_TOKEN_HINT, SAFE_METHODS, BearerTokens
from server.surfaces.http.dashboard.assets import AssetShelf
from server.surfaces.http.dashboard.sessions import SessionCookies, session_cookie
from server.surfaces.http.hosts import HostPolicy

__all__ = [
    "ASSETS_PREFIX",
    "CONTENT_SECURITY_POLICY",
    "SESSION_PATH",
    "Dashboard",
    "is_dashboard_path",
]

UI_PREFIX = "/ui"
ASSETS_PREFIX = UI_PREFIX + "/assets/"
SESSION_PATH = UI_PREFIX + "/session"
INDEX = "index.html"
LARGEST_SIGN_IN = 4096  # bytes of JSON: a token is about 50

# Scripts only from here, none inline; xterm.js's renderer sets its theme with <style>
# elements it creates, hence 'unsafe-inline' for styles (never for scripts).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def is_dashboard_path(path: str) -> bool:
    return path == "/" or path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _refusal(status: int, error: str, message: str) -> Response:
    return _json(status, {"error": error, "message": message})


class Dashboard:
    """The ASGI app for the dashboard's paths (see :func:`is_dashboard_path`)."""

    def __init__(
        self,
        cookies: SessionCookies,
        bearer: BearerTokens,
        hosts: HostPolicy,
    ) -> None:
        self.cookies = cookies
        self.bearer = bearer
        self.hosts = hosts
        self.assets = AssetShelf()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._answer(request)
        response.headers.update(SECURITY_HEADERS)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        headers, method, path = request.headers, request.method, request.url.path
        if not self.hosts.allows_host(headers.get("host")):
            return _refusal(
                421, "misdirected-request",
                f"this server does not answer to the host {headers.get('host')!r}; open the "
                "dashboard through one of its own names (or start it with --allowed-host)",
            )  # fmt: skip
        if method not in SAFE_METHODS and not self.hosts.allows_origin(headers.get("origin")):
            return _refusal(
                403, "foreign-origin",
                f"a page of {headers.get('origin')} may not sign in or out here; use the "
                "dashboard's own sign-in page",
            )  # fmt: skip
        if path == SESSION_PATH:
            return await self._session(request)
        if method not in ("GET", "HEAD"):
            return _refusal(405, "method-not-allowed", f"{path} only answers GET")
        if path.startswith(ASSETS_PREFIX):
            return await self._asset(path.removeprefix(ASSETS_PREFIX), headers)
        # The page itself, for every dashboard path: the pages route in the browser.
        return await self._asset(INDEX, headers)

    async def _asset(self, name: str, headers: Headers) -> Response:
        asset = None if ".." in name.split("/") else await self.assets.get(name)
        if asset is None:
            return Response(
                f"no dashboard file {name!r}; the page loads what it needs by itself\n",
                status_code=404,
                media_type="text/plain; charset=utf-8",
            )
        common = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=common)
        if asset.gzipped is not None and "gzip" in headers.get("accept-encoding", ""):
            return Response(
                asset.gzipped,
                media_type=asset.media_type,
                headers={**common, "Content-Encoding": "gzip"},
            )
        return Response(asset.body, media_type=asset.media_type, headers=common)

    # -- /ui/session --------------------------------------------------------------------------

    async def _session(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._who(request)
        if request.method == "POST":
            return await self._sign_in(request)
        if request.method == "DELETE":
            return await self._sign_out(request)
        return _refusal(
            405, "method-not-allowed",
            "GET the session, POST {\"token\": ...} to sign in, DELETE to sign out",
        )  # fmt: skip

    async def _who(self, request: Request) -> Response:
        found = await self.cookies.session(request.headers)
        if found is None:
            return _json(200, {"signed_in": False})
        _, session = found
        return _json(
            200,
            {
                "signed_in": True,
                "agent_id": session.agent_id,
                "csrf_token": session.csrf_token,
                "expires_in_s": round(self.cookies.book.expires_in(session)),
            },
        )

    async def _sign_in(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _refusal(
                415, "unsupported-media-type",
                'send the token as JSON, {"token": "pvm_..."}, with Content-Type: '
                "application/json",
            )  # fmt: skip
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LARGEST_SIGN_IN:
                return _refusal(413, "too-large", 'send only {"token": "pvm_..."}')
        try:
            token = json.loads(body or b"{}").get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token.strip():
            return _refusal(422, "invalid-input", 'send {"token": "pvm_..."}: an agent token')
        identity = await self.bearer.token(token.strip())
        if identity is None:
            return _refusal(
                401, "unauthorized",
                f"that token is not (or no longer) an agent's token; {CREATE_TOKEN_HINT}, "
                "or replace a lost one with: projectvm agents token NAME",
            )  # fmt: skip
        # Signing in again starts a new session: a cookie planted before is worth nothing.
        previous = await self.cookies.session(request.headers)
        if previous is not None:
            self.cookies.book.close(previous[0])
        session_id, session = self.cookies.book.open(identity.agent_id, hash_token(token.strip()))
        cookie = session_cookie(
            session_id,
            max_age_s=int(self.cookies.book.lifetime_s),
            secure=request.url.scheme == "https",
        )
        body_out = {
            "signed_in": True,
            "agent_id": session.agent_id,
            "csrf_token": session.csrf_token,
            "expires_in_s": round(self.cookies.book.expires_in(session)),
        }
        return _json(201, body_out, {"Set-Cookie": cookie})

    async def _sign_out(self, request: Request) -> Response:
        found = await self.cookies.session(request.headers)
        if found is not None:
            session_id, session = found
            if not session.csrf_matches(request.headers):
                return _refusal(
                    403, "csrf-check-failed",
                    "signing out needs the session's CSRF token (X-CSRF-Token); use the "
                    "dashboard's sign-out button",
                )  # fmt: skip
            self.cookies.book.close(session_id)
        cleared = session_cookie("", max_age_s=0, secure=request.url.scheme == "https")
        headers = {"Set-Cookie": cleared, "Cache-Control": "no-store"}
        return Response(status_code=204, headers=headers)
