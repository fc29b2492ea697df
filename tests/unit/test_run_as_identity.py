"""When the agent may run commands as another uid, and why not when it may not."""

from __future__ import annotations

import os

import pytest

from guest_runtime.agent import identity
from guest_runtime.agent.identity import Identity


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent switches uids only as root; these tests run as an ordinary user")


def test_a_root_agent_with_every_needed_capability_runs_commands_as_the_given_uid(
    as_root: None,
) -> None:
    chosen, why = identity.effective(Identity(1000, 1000))
    assert chosen is not None, why
    assert (chosen.uid, chosen.gid) == (1000, 1000)


def test_an_agent_that_cannot_kill_another_uids_processes_says_so_and_keeps_its_own(
    as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where capabilities are trimmed (a sandbox), one left out must not leave commands that
    # the agent can start but never end.
    monkeypatch.setattr(identity, "_missing_capabilities", lambda: ["CAP_KILL"])
    chosen, why = identity.effective(Identity(1000, 1000))
    assert chosen is None
    assert "lacks CAP_KILL" in why


def test_cap_kill_is_among_what_the_agent_needs() -> None:
    assert "CAP_KILL" in identity.NEEDED_CAPABILITIES.values()
