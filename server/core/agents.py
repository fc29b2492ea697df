"""Agent identities and their tokens: issued once, stored only as a hash, resolved per request."""

from __future__ import annotations

import hashlib
import secrets
import time

from server.domain.errors import InvalidInput, NotFound
from server.domain.models import AGENT_ID_PATTERN
from server.store import Store

__all__ = ["TOKEN_PREFIX", "Agents", "hash_token"]

TOKEN_PREFIX = "pvm_"
SEEN_EVERY_S = 60.0


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain digest is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(agent_id: str) -> None:
    if not AGENT_ID_PATTERN.match(agent_id):
        raise InvalidInput(
            f"{agent_id!r} is not a valid agent name: use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )


class Agents:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._seen: dict[str, float] = {}

    async def ensure(self, agent_id: str, *, user: str | None = None) -> None:
        """The agent exists (made for ``user``, the person running the server, if new)."""
        _check_name(agent_id)
        async with self._store.transaction():
            await self._store.agents.ensure(agent_id, user)
            await self._store.agents.touch(agent_id)

    async def issue_token(
        self, agent_id: str, *, replace: bool = False, user: str | None = None
    ) -> str:
        """Create ``agent_id`` (for ``user``) if needed and give it a new token; returns the
        token, which is shown once and never stored."""
        _check_name(agent_id)
        existing = await self._store.agents.get(agent_id)
        if existing is not None and existing.has_token and not replace:
            raise InvalidInput(
                f"agent {agent_id!r} already has a token; use `projectvm agents token "
                f"{agent_id}` to replace it"
            )
        if existing is None and replace:
            raise NotFound(
                f"no agent {agent_id!r}; create it with `projectvm agents add {agent_id}`"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self._store.transaction():
            await self._store.agents.ensure(agent_id, user)
            await self._store.agents.set_token_hash(agent_id, hash_token(token))
        return token

    async def resolve(self, token: str) -> str | None:
        """The agent a bearer token belongs to, or ``None`` (its last-seen time is noted)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        agent = await self.resolve_hash(hash_token(token))
        if agent is not None and time.monotonic() - self._seen.get(agent, -SEEN_EVERY_S) >= (
            SEEN_EVERY_S
        ):
            self._seen[agent] = time.monotonic()
            async with self._store.transaction():
                await self._store.agents.touch(agent)
        return agent

    async def resolve_hash(self, token_hash: str) -> str | None:
        """The agent whose current token has this hash: a dashboard session opened with a token
        keeps only its hash and ends when the token is replaced or the agent removed."""
        return await self._store.agents.for_token_hash(token_hash)

    async def remove(self, agent_id: str) -> None:
        owned = [p for p in await self._store.projects.list() if p.owner_id == agent_id]
        if owned:
            raise InvalidInput(
                f"agent {agent_id!r} owns {len(owned)} project(s) "
                f"({', '.join(p.project_id for p in owned[:5])}); delete them first"
            )
        async with self._store.transaction():
            removed = await self._store.agents.remove(agent_id)
        if not removed:
            raise NotFound(f"no agent {agent_id!r}")
