"""Agent tokens: issued once, stored only as a hash, checked on every HTTP request."""

from __future__ import annotations

import hashlib
import secrets

from server.errors import InvalidInput, NotFound
from server.models import AGENT_ID_PATTERN
from server.store import Store

__all__ = ["TOKEN_PREFIX", "hash_token", "issue_token", "resolve_token"]

TOKEN_PREFIX = "pvm_"


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain digest is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(
    store: Store, agent_id: str, *, replace: bool = False, user: str | None = None
) -> str:
    """Create ``agent_id`` (for ``user``, the person issuing it) if needed and give it a new
    token; returns the token, which is shown once and never stored."""
    if not AGENT_ID_PATTERN.match(agent_id):
        raise InvalidInput(
            f"{agent_id!r} is not a valid agent name: use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    existing = await store.get_agent(agent_id)
    if existing is not None and existing.has_token and not replace:
        raise InvalidInput(
            f"agent {agent_id!r} already has a token; use `projectvm agents token {agent_id}` "
            "to replace it"
        )
    if existing is None and replace:
        raise NotFound(f"no agent {agent_id!r}; create it with `projectvm agents add {agent_id}`")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.ensure_agent(agent_id, user_id=user)
    await store.set_agent_token(agent_id, hash_token(token))
    return token


async def resolve_token(store: Store, token: str) -> str | None:
    """The agent a bearer token belongs to, or ``None``."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return await store.agent_for_token_hash(hash_token(token))
