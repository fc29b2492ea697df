"""Changes to a Machine the way Fly wants them: leased, converging, and waited for.

Every mutation runs under the Machine's lease (``lease``: acquire with a TTL, pass the nonce,
release), a lease someone else holds is waited for within ``lease_wait_s`` and then reported
with its holder; ``start`` and ``stop`` converge (an error followed by a look at the state that
shows the Machine there or on its way counts as done); ``wait_for`` polls Fly's ``wait``
endpoint in growing chunks and fails fast when the Machine can no longer get there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from vm_drivers.config import FlyDriverConfig
from vm_drivers.errors import DriverTimeout, VMOperationFailed
from vm_drivers.fly.api import FlyAPIError, FlyMachinesAPI, RetryPolicy
from vm_drivers.fly.errors import translate_fly_error
from vm_drivers.fly.machines import GONE_STATES, events_summary
from vm_drivers.fly.models import Machine, StopRequest

__all__ = ["MachineOperations", "call"]

T = TypeVar("T")
log = logging.getLogger("projectvm.fly")


async def call(action: str, awaitable: Awaitable[T]) -> T:
    """Await a Machines API call; its error comes out translated into the driver error tree."""
    try:
        return await awaitable
    except FlyAPIError as err:
        raise translate_fly_error(err, action) from err


class MachineOperations:
    def __init__(
        self, api: Callable[[], FlyMachinesAPI], config: FlyDriverConfig, retry: RetryPolicy
    ) -> None:
        self.api = api
        self.config = config
        self._retry = retry

    async def wait_for(self, app: str, machine: Machine, state: str) -> Machine:
        """Until ``machine`` is in ``state``; a Machine that can no longer get there fails."""
        api = self.api()
        timeout = self.config.start_timeout_s
        deadline = anyio.current_time() + timeout
        instance_id = machine.instance_id  # this version of it (an update makes a new one)
        current = machine
        rounds = 0
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise DriverTimeout(
                    f"Machine {machine.id} of {app} did not become {state} within {timeout:g}s "
                    f"(it is {current.state}: {events_summary(current)}); try again, or look at "
                    f"`fly logs -a {app}`"
                )
            # Short waits first: a Machine that fails says so only when asked again.
            chunk = min(self.config.wait_timeout_s, 2**rounds, math.ceil(remaining))
            rounds += 1
            reached = await call(
                f"waiting for Machine {machine.id} to be {state}",
                api.wait_machine(app, machine.id, state, chunk, instance_id),
            )
            current = await call(
                f"looking up Machine {machine.id}", api.get_machine(app, machine.id)
            )
            if reached or current.state == state:
                return current
            hopeless = current.state in ("failed", "launch_failed") or current.state in GONE_STATES
            if state == "started" and current.state in ("stopped", "suspended"):
                hopeless = True  # it ran and exited (the agent crashed or was killed)
            if hopeless:
                raise VMOperationFailed(
                    f"Machine {machine.id} of {app} is {current.state} instead of {state} "
                    f"({events_summary(current)}); check the image has python3, and "
                    f"`fly logs -a {app}`"
                )

    async def acquire_lease(self, app: str, machine_id: str) -> str:
        """A lease nonce; a lease someone else holds is waited for, up to ``lease_wait_s``."""
        deadline = anyio.current_time() + self.config.lease_wait_s
        attempt = 0
        while True:
            try:
                lease = await self.api().acquire_lease(
                    app, machine_id, self.config.lease_ttl_s, "projectvm"
                )
                return lease.nonce
            except FlyAPIError as err:
                if err.status_code != 409 and not err.transient:
                    raise translate_fly_error(err, f"leasing Machine {machine_id}") from err
                delay = self._retry.delay(attempt, err)
                attempt += 1
                if anyio.current_time() + delay > deadline:
                    if err.status_code == 409:
                        raise VMOperationFailed(
                            f"Machine {machine_id} of {app} is leased by someone else "
                            f"({err.message}); waited {self.config.lease_wait_s:g}s. Another "
                            "tool (such as `fly machine update`) is changing it: try again "
                            "when it is done"
                        ) from err
                    raise translate_fly_error(err, f"leasing Machine {machine_id}") from err
                await anyio.sleep(delay)

    @asynccontextmanager
    async def lease(
        self, app: str, machine_id: str, nonce: str | None = None
    ) -> AsyncIterator[str]:
        """Hold the Machine's lease for the block (``nonce``: one already held)."""
        if nonce is None:
            nonce = await self.acquire_lease(app, machine_id)
        try:
            yield nonce
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await self.api().release_lease(app, machine_id, nonce)
                except FlyAPIError as err:
                    if err.status_code != 404:  # gone with its Machine, or expires by itself
                        log.info("releasing the lease on %s failed: %s", machine_id, err)

    async def start(self, app: str, machine: Machine, nonce: str) -> None:
        try:
            await self.api().start_machine(app, machine.id, nonce)
        except FlyAPIError as err:
            current = await call(
                f"looking up {machine.id}", self.api().get_machine(app, machine.id)
            )
            if current.state not in ("starting", "started"):
                raise translate_fly_error(err, f"starting Machine {machine.id}") from err

    async def stop(self, app: str, machine: Machine, nonce: str) -> None:
        request = StopRequest(signal="SIGTERM", timeout=f"{self.config.stop_timeout_s}s")
        try:
            await self.api().stop_machine(app, machine.id, request, nonce)
        except FlyAPIError as err:
            current = await call(
                f"looking up {machine.id}", self.api().get_machine(app, machine.id)
            )
            if current.state not in ("stopping", "stopped"):
                raise translate_fly_error(err, f"stopping Machine {machine.id}") from err
        await self.wait_for(app, machine, "stopped")
