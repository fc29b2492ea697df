"""A typed client of the Fly Machines API over httpx, with an injectable transport.

Only calls that are safe to repeat are retried here (GETs, DELETEs, ``wait``, setting the same
secret values): on a 429, a 5xx or a dropped connection, with exponential backoff and jitter,
never sooner than the rate-limit floor after a 429 (Fly counts about one request per second per
action). A POST that creates or changes something is never repeated blindly: it fails with
:class:`FlyAPIError` and the driver looks for what it may have made before trying again.
Errors carry the HTTP status, Fly's machine-readable status and the ``fly-request-id``; the
driver translates them into the ProjectVM error tree (``vm_drivers.fly.errors``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from vm_drivers.fly.models import (
    App,
    CreateAppRequest,
    CreateLeaseRequest,
    CreateMachineRequest,
    CreateVolumeRequest,
    IPAssignmentRequest,
    Lease,
    ListedApp,
    Machine,
    SetSecretsRequest,
    StopRequest,
    UpdateMachineRequest,
    Volume,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "LEASE_NONCE_HEADER",
    "FlyAPIError",
    "FlyMachinesAPI",
    "RetryPolicy",
    "authorization_header",
]

DEFAULT_BASE_URL = "https://api.machines.dev"
LEASE_NONCE_HEADER = "fly-machine-lease-nonce"
MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")
# wait blocks up to 60 s on the server: reads must be allowed longer.
WAIT_READ_MARGIN_S = 15.0


class FlyAPIError(Exception):
    """A Machines API call failed. ``status_code`` 0 means no HTTP answer at all."""

    def __init__(
        self,
        method: str,
        path: str,
        status_code: int,
        message: str,
        *,
        fly_status: str = "",
        request_id: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        where = f" (fly-request-id {request_id})" if request_id else ""
        answer = f"HTTP {status_code}" if status_code else "no answer"
        super().__init__(f"{method} {path}: {answer}: {message}{where}")
        self.method = method
        self.path = path
        self.status_code = status_code
        self.message = message
        self.fly_status = fly_status
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    @property
    def transient(self) -> bool:
        """Worth another try later: rate limited, a platform error, or no answer."""
        return self.status_code in (0, 429) or self.status_code >= 500

    @property
    def ambiguous(self) -> bool:
        """A create may have happened anyway (a 408 can hide a committed Machine): look first."""
        return self.transient or self.status_code == 408


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_s: float = 0.2
    max_s: float = 5.0
    jitter: float = 0.5
    rate_limit_floor_s: float = 1.0

    def delay(self, attempt: int, error: FlyAPIError) -> float:
        """How long to wait before try ``attempt + 1`` after ``error``."""
        base = min(self.max_s, self.initial_s * 2**attempt)
        delay: float = base * (1 + random.uniform(-self.jitter, self.jitter))
        if error.status_code == 429:
            delay = max(delay, error.retry_after_s or 0.0, self.rate_limit_floor_s)
        return delay


def authorization_header(token: str) -> str:
    """Fly's rule (fly-go ``tokens``): keep a scheme the token carries, else FlyV1 for macaroons
    and Bearer for the rest."""
    token = token.strip()
    scheme, _, rest = token.partition(" ")
    if rest and scheme in ("FlyV1", "Bearer"):
        return token
    return f"FlyV1 {token}" if token.startswith(MACAROON_PREFIXES) else f"Bearer {token}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(60.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class FlyMachinesAPI:
    """One client per driver; ``aclose`` releases its connections."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            base_url=f"{self.base_url}/v1",
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            headers={
                "Authorization": authorization_header(token.get_secret_value()),
                "User-Agent": "projectvm-fly-driver",
            },
        )
        self.requests_sent = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        nonce: str | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        headers = {LEASE_NONCE_HEADER: nonce} if nonce else {}
        self.requests_sent += 1
        try:
            response = await self._client.request(
                method,
                path,
                json=body,
                params=params,
                headers=headers,
                timeout=timeout_s or self._timeout_s,
            )
        except httpx.TimeoutException as err:
            raise FlyAPIError(method, path, 0, f"timed out ({type(err).__name__})") from err
        except httpx.TransportError as err:
            raise FlyAPIError(
                method, path, 0, f"cannot reach {self.base_url} ({err or type(err).__name__})"
            ) from err
        if response.status_code >= 400:
            raise self._error(method, path, response)
        return response

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> FlyAPIError:
        message, fly_status = response.text.strip()[:500] or response.reason_phrase, ""
        try:
            data = response.json()
        except (ValueError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict):
            # {"error", "status"} mostly; {"message"} on some; {"status":"error","message","code"}
            # from the lease endpoints.
            message = str(data.get("error") or data.get("message") or message)
            status = data.get("code") if data.get("status") == "error" else data.get("status")
            fly_status = str(status or "")
        return FlyAPIError(
            method,
            path,
            response.status_code,
            message,
            fly_status=fly_status,
            request_id=response.headers.get("fly-request-id", ""),
            retry_after_s=_retry_after(response),
        )

    async def _idempotent(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        nonce: str | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """A call that may be repeated: retried on transient errors, with backoff."""
        attempt = 0
        while True:
            try:
                return await self._send(
                    method, path, body=body, params=params, nonce=nonce, timeout_s=timeout_s
                )
            except FlyAPIError as err:
                attempt += 1
                if not err.transient or attempt >= self._retry.attempts:
                    raise
                await anyio.sleep(self._retry.delay(attempt - 1, err))

    @staticmethod
    def _parse(model: type[BaseModel], response: httpx.Response) -> Any:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as err:
            raise FlyAPIError(
                response.request.method,
                response.request.url.path,
                response.status_code,
                f"unexpected answer ({err})",
            ) from err

    @staticmethod
    def _parse_list(item: type[BaseModel], response: httpx.Response) -> list[Any]:
        try:
            return TypeAdapter(list[item]).validate_python(response.json())  # type: ignore[valid-type]
        except (ValueError, ValidationError) as err:
            raise FlyAPIError(
                response.request.method,
                response.request.url.path,
                response.status_code,
                f"unexpected answer ({err})",
            ) from err

    # -- apps ---------------------------------------------------------------------------------

    async def list_apps(self, org_slug: str) -> list[ListedApp]:
        response = await self._idempotent("GET", "/apps", params={"org_slug": org_slug})
        data = response.json()
        apps = data.get("apps") if isinstance(data, dict) else None
        return [ListedApp.model_validate(app) for app in apps or []]

    async def get_app(self, app: str) -> App:
        return self._parse(App, await self._idempotent("GET", f"/apps/{app}"))  # type: ignore[no-any-return]

    async def create_app(self, request: CreateAppRequest) -> None:
        await self._send("POST", "/apps", body=request.body())

    async def delete_app(self, app: str) -> None:
        # force: stop its Machines first; deleting an app removes its Machines and volumes.
        await self._idempotent("DELETE", f"/apps/{app}", params={"force": "true"})

    async def set_secrets(self, app: str, values: Mapping[str, str]) -> None:
        # Setting the same values twice is harmless: safe to retry.
        await self._idempotent(
            "POST", f"/apps/{app}/secrets", body=SetSecretsRequest(values=dict(values)).body()
        )

    async def assign_ip(self, app: str, request: IPAssignmentRequest) -> None:
        await self._send("POST", f"/apps/{app}/ip_assignments", body=request.body())

    # -- volumes ------------------------------------------------------------------------------

    async def list_volumes(self, app: str) -> list[Volume]:
        return self._parse_list(Volume, await self._idempotent("GET", f"/apps/{app}/volumes"))

    async def create_volume(self, app: str, request: CreateVolumeRequest) -> Volume:
        response = await self._send("POST", f"/apps/{app}/volumes", body=request.body())
        return self._parse(Volume, response)  # type: ignore[no-any-return]

    # -- machines -----------------------------------------------------------------------------

    async def list_machines(
        self, app: str, metadata: Mapping[str, str] | None = None
    ) -> list[Machine]:
        params = {f"metadata.{key}": value for key, value in (metadata or {}).items()}
        response = await self._idempotent("GET", f"/apps/{app}/machines", params=params)
        return self._parse_list(Machine, response)

    async def get_machine(self, app: str, machine_id: str) -> Machine:
        response = await self._idempotent("GET", f"/apps/{app}/machines/{machine_id}")
        return self._parse(Machine, response)  # type: ignore[no-any-return]

    async def create_machine(self, app: str, request: CreateMachineRequest) -> Machine:
        response = await self._send("POST", f"/apps/{app}/machines", body=request.body())
        return self._parse(Machine, response)  # type: ignore[no-any-return]

    async def update_machine(
        self, app: str, machine_id: str, request: UpdateMachineRequest, nonce: str | None
    ) -> Machine:
        path = f"/apps/{app}/machines/{machine_id}"
        response = await self._send("POST", path, body=request.body(), nonce=nonce)
        return self._parse(Machine, response)  # type: ignore[no-any-return]

    async def start_machine(self, app: str, machine_id: str, nonce: str | None) -> None:
        await self._send("POST", f"/apps/{app}/machines/{machine_id}/start", nonce=nonce)

    async def stop_machine(
        self, app: str, machine_id: str, request: StopRequest, nonce: str | None
    ) -> None:
        path = f"/apps/{app}/machines/{machine_id}/stop"
        await self._send("POST", path, body=request.body(), nonce=nonce)

    async def suspend_machine(self, app: str, machine_id: str, nonce: str | None) -> None:
        await self._send("POST", f"/apps/{app}/machines/{machine_id}/suspend", nonce=nonce)

    async def delete_machine(self, app: str, machine_id: str, nonce: str | None) -> None:
        await self._idempotent(
            "DELETE", f"/apps/{app}/machines/{machine_id}", params={"force": "true"}, nonce=nonce
        )

    async def wait_machine(
        self, app: str, machine_id: str, state: str, timeout_s: int, instance_id: str = ""
    ) -> bool:
        """Block until the Machine is in ``state`` (True) or ``timeout_s`` passed (False)."""
        timeout_s = max(1, min(60, timeout_s))  # the API clamps to 1..60 s
        params = {"state": state, "timeout": str(timeout_s)}
        if instance_id:
            params["instance_id"] = instance_id
        try:
            await self._idempotent(
                "GET",
                f"/apps/{app}/machines/{machine_id}/wait",
                params=params,
                timeout_s=timeout_s + WAIT_READ_MARGIN_S,
            )
        except FlyAPIError as err:
            if err.status_code == 408:
                return False
            raise
        return True

    # -- leases -------------------------------------------------------------------------------

    async def acquire_lease(self, app: str, machine_id: str, ttl_s: int, description: str) -> Lease:
        response = await self._send(
            "POST",
            f"/apps/{app}/machines/{machine_id}/lease",
            body=CreateLeaseRequest(ttl=ttl_s, description=description).body(),
        )
        data = response.json()
        # The wire wraps the lease in {"status": "success", "data": {...}}; the spec does not.
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            data = data["data"]
        try:
            return Lease.model_validate(data)
        except ValidationError as err:
            raise FlyAPIError(
                "POST", response.request.url.path, 200, f"no lease in {data}"
            ) from err

    async def release_lease(self, app: str, machine_id: str, nonce: str) -> None:
        await self._idempotent("DELETE", f"/apps/{app}/machines/{machine_id}/lease", nonce=nonce)
