"""One Firecracker VM from spawn to exit: configuration, InstanceStart, hello, stop, snapshots.

The pre-boot configuration is a list of :class:`ApiCall` built by :func:`configuration_calls`
(a pure function, so tests check every payload against the spec), sent one by one in
Firecracker's documented order, then read back with ``GET /vm/config``. After InstanceStart the
machine waits for the guest agent's ``hello`` over vsock; a guest that never says it — a kernel
that hangs on a nested or partial KVM, or a VMM that dies with ``KVM_EXIT_INTERNAL_ERROR`` —
ends in :class:`BootFailed` naming the cause with the console's last lines, and the caller
kills and cleans up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestProtocolError, GuestUnreachable
from guest_runtime.protocol import GuestInfo
from vm_drivers.errors import DriverUnavailable, VMOperationFailed
from vm_drivers.firecracker.api import (
    MINIMUM_VERSION,
    ApiObserver,
    BootSource,
    Drive,
    EntropyDevice,
    FirecrackerAPI,
    FirecrackerAPIError,
    FullVmConfiguration,
    Logger,
    MachineConfiguration,
    Metrics,
    NetworkInterface,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vsock,
    _Request,
)
from vm_drivers.firecracker.network import TapPlan
from vm_drivers.firecracker.process import (
    ConsoleLog,
    RuntimePaths,
    VMMProcess,
    wait_for_api_socket,
)
from vm_drivers.firecracker.vsock import connect_vsock

__all__ = [
    "ApiCall",
    "BootFailed",
    "Machine",
    "MachineSettings",
    "boot_args",
    "config_mismatches",
    "configuration_calls",
]

API_SOCKET_TIMEOUT_S = 5.0
HELLO_CALL_TIMEOUT_S = 10.0
SHUTDOWN_CALL_TIMEOUT_S = 5.0
INSTALL_HINT = (
    "install Firecracker 1.8 or later from the official release tarballs "
    "(https://github.com/firecracker-microvm/firecracker/releases: "
    "firecracker-v<version>-x86_64.tgz, put release-*/firecracker-v*-x86_64 on PATH as "
    "`firecracker`), or set the firecracker driver's binary option"
)
KVM_FAILURE_MARKERS = ("KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_SHUTDOWN")


class BootFailed(VMOperationFailed):
    """The guest never said hello; the message names the cause and the console's last lines.

    ``cause`` is the one-sentence reason (what a probe reports); the message adds the tails.
    """

    def __init__(self, cause: str, *, console_tail: str, log_tail: str) -> None:
        super().__init__(
            f"{cause}. Guest console's last lines:\n{console_tail}\nFirecracker's log:\n"
            f"{log_tail}\nRun `projectvm doctor` (its boot probe tells whether KVM can run "
            "guests here); on such hosts use the qemu driver"
        )
        self.cause = cause
        self.console_tail = console_tail
        self.log_tail = log_tail


@dataclass(frozen=True)
class ApiCall:
    """One pre-boot configuration request."""

    name: str
    body: _Request
    path_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineSettings:
    """What a VM is made of, with every path as Firecracker names it."""

    vcpus: int
    memory_mb: int
    kernel: str
    initramfs: str
    rootfs: str
    data_disk: str
    vsock_socket: str
    log_path: str
    log_level: Any = "Warning"
    metrics_path: str | None = None
    agent_port: int = 52
    tap: TapPlan | None = None
    extra_boot_args: str = ""


def boot_args(settings: MachineSettings) -> str:
    """The whole kernel command line: it replaces Firecracker's default one."""
    args = [
        "console=ttyS0",
        "reboot=k",  # a guest reboot resets through the i8042, and Firecracker exits
        "panic=1",
        "pci=off",
        "i8042.noaux",
        "i8042.nomux",
        "i8042.dumbkbd",
        "pvm.vmm=firecracker",
        f"pvm.channel=vsock:{settings.agent_port}",
    ]
    if settings.tap is not None:
        args.append(settings.tap.boot_arg())
    if settings.extra_boot_args.strip():
        args.append(settings.extra_boot_args.strip())
    return " ".join(args)


def configuration_calls(settings: MachineSettings) -> list[ApiCall]:
    """The pre-boot requests, in Firecracker's documented order; no network unless a tap."""
    calls = [
        ApiCall(
            "logger",
            Logger(log_path=settings.log_path, level=settings.log_level, show_level=True),
        )
    ]
    if settings.metrics_path is not None:
        calls.append(ApiCall("metrics", Metrics(metrics_path=settings.metrics_path)))
    calls += [
        ApiCall(
            "machine_config",
            MachineConfiguration(vcpu_count=settings.vcpus, mem_size_mib=settings.memory_mb),
        ),
        ApiCall(
            "boot_source",
            BootSource(
                kernel_image_path=settings.kernel,
                initrd_path=settings.initramfs,
                boot_args=boot_args(settings),
            ),
        ),
        # The shared base image: read-only, and the guest's page cache is all that matters.
        ApiCall(
            "drive",
            Drive(
                drive_id="rootfs",
                path_on_host=settings.rootfs,
                is_read_only=True,
                cache_type="Unsafe",
            ),
            {"drive_id": "rootfs"},
        ),
        # The project's workspace: guest flushes must reach the host file.
        ApiCall(
            "drive",
            Drive(
                drive_id="data",
                path_on_host=settings.data_disk,
                is_read_only=False,
                cache_type="Writeback",
            ),
            {"drive_id": "data"},
        ),
    ]
    if settings.tap is not None:
        calls.append(
            ApiCall(
                "network_interface",
                NetworkInterface(
                    iface_id="eth0",
                    host_dev_name=settings.tap.name,
                    guest_mac=settings.tap.guest_mac,
                ),
                {"iface_id": "eth0"},
            )
        )
    calls += [
        ApiCall("vsock", Vsock(guest_cid=3, uds_path=settings.vsock_socket)),
        ApiCall("entropy", EntropyDevice()),
    ]
    return calls


def config_mismatches(sent: Any, kept: Any, where: str = "") -> list[str]:
    """Where Firecracker's ``GET /vm/config`` differs from what was sent (extra keys are fine)."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [f"{where or '/'}: sent an object, Firecracker reports {kept!r}"]
        found: list[str] = []
        for key, value in sent.items():
            found += config_mismatches(value, kept.get(key), f"{where}/{key}")
        return found
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [f"{where}: sent {len(sent)} entries, Firecracker reports {kept!r}"]
        return [
            problem
            for index, (one, other) in enumerate(zip(sent, kept, strict=True))
            for problem in config_mismatches(one, other, f"{where}/{index}")
        ]
    if sent != kept:
        return [f"{where}: sent {sent!r}, Firecracker reports {kept!r}"]
    return []


def _expected_config(calls: Sequence[ApiCall]) -> dict[str, Any]:
    """What ``GET /vm/config`` should show for ``calls`` (logger and metrics are not shown)."""
    sections = {
        "machine_config": "machine-config",
        "boot_source": "boot-source",
        "vsock": "vsock",
        "entropy": "entropy",
    }
    expected: dict[str, Any] = {"drives": [], "network-interfaces": []}
    for call in calls:
        if call.name in sections:
            expected[sections[call.name]] = call.body.payload()
        elif call.name == "drive":
            expected["drives"].append(call.body.payload())
        elif call.name == "network_interface":
            expected["network-interfaces"].append(call.body.payload())
    return expected


class Machine:
    """One Firecracker process and the VM inside it."""

    def __init__(
        self,
        *,
        paths: RuntimePaths,
        process: VMMProcess,
        api: FirecrackerAPI,
        console: ConsoleLog | None,
        version: str,
    ) -> None:
        self.paths = paths
        self.process = process
        self.api = api
        self.console = console
        self.version = version

    @classmethod
    async def attach(
        cls,
        process: VMMProcess,
        paths: RuntimePaths,
        console: ConsoleLog | None,
        *,
        api_timeout_s: float,
        observer: ApiObserver | None = None,
    ) -> Machine:
        """Wait for the API socket of a just-spawned VMM, then check its version."""
        api = FirecrackerAPI(paths.api_socket, timeout_s=api_timeout_s, observer=observer)
        machine = cls(paths=paths, process=process, api=api, console=console, version="")
        try:
            if console is not None:
                await wait_for_api_socket(process, paths.api_socket, console, API_SOCKET_TIMEOUT_S)
            version = await api.version()
            if version.triple < MINIMUM_VERSION:
                raise DriverUnavailable(
                    "firecracker",
                    f"Firecracker {version.firecracker_version} is too old: the driver needs "
                    "1.8 or later (ACPI, which the guest kernel needs to find its CPUs and "
                    "devices)",
                    INSTALL_HINT,
                )
            machine.version = version.firecracker_version
        except BaseException:
            with anyio.CancelScope(shield=True):
                await machine.kill()
            raise
        return machine

    # -- boot ---------------------------------------------------------------------------------

    async def configure(self, calls: Sequence[ApiCall]) -> FullVmConfiguration:
        """Send the pre-boot requests one by one, then check Firecracker kept every value."""
        for call in calls:
            await self.api.put(call.name, call.body, **call.path_params)
        config = await self.api.vm_config()
        mismatches = config_mismatches(
            _expected_config(calls), config.model_dump(mode="json", by_alias=True)
        )
        if mismatches:
            raise VMOperationFailed(
                "Firecracker did not keep the configuration it accepted ("
                + "; ".join(mismatches[:5])
                + "); this Firecracker version may be unsupported: use a release from 1.8 on"
            )
        return config

    async def start_instance(self) -> None:
        await self.api.action("InstanceStart")

    async def wait_for_hello(self, port: int, deadline_s: float) -> GuestInfo:
        """The guest agent's hello over vsock, or :class:`BootFailed` within ``deadline_s``."""
        began = anyio.current_time()
        try:
            with anyio.fail_after(deadline_s):
                stream = await connect_vsock(
                    self.paths.vsock_socket,
                    port,
                    deadline_s=deadline_s,
                    still_running=self._gone_reason,
                )
                async with GuestClient(stream) as client:
                    return await client.hello()
        except GuestProtocolError as err:
            # It did answer, in a way we cannot use: a wrong agent, not a boot problem.
            raise VMOperationFailed(
                f"the guest agent answered but cannot be used: {err}; rebuild the VM images "
                "with this version of ProjectVM's agent"
            ) from err
        except (GuestUnreachable, TimeoutError) as err:
            waited = anyio.current_time() - began
            raise await self.diagnose(waited, port, err) from None

    def _gone_reason(self) -> str | None:
        return None if self.process.running() else "the Firecracker process exited"

    async def diagnose(
        self, waited: float, port: int, err: BaseException | None = None
    ) -> BootFailed:
        """Why the guest is not answering, with the console's and the VMM log's last lines."""
        log_tail = _tail_file(self.paths.vmm_log)
        if self.console is None:
            console_tail = "(not captured: the VMM was started by an earlier server)"
        else:
            console_tail = self.console.tail(guest_only=True)
            if console_tail == "(no output)":
                console_tail = "(the guest printed nothing)"
        if not self.process.running():
            with anyio.move_on_after(1):
                await self.process.wait()
            if self.console is not None:  # what it said on stderr as it died
                log_tail += "\n" + self.console.tail(5)
            kvm = next((m for m in KVM_FAILURE_MARKERS if m in log_tail + console_tail), None)
            cause = (
                f"Firecracker exited (status {self.process.exit_code}) {waited:.0f}s after "
                "InstanceStart"
            )
            if kvm is not None:
                cause += (
                    f" because its vCPU failed with {kvm}: this host's KVM cannot run the guest "
                    "(nested or partial virtualization)"
                )
        else:
            cause = (
                f"the guest did not say hello on vsock port {port} within {waited:.0f}s although "
                "Firecracker is running: the guest kernel hangs while booting (as on hosts whose "
                "/dev/kvm is nested or partial and cannot run guests to userspace), or the "
                "images do not start the agent on vsock"
            )
            if err is not None and not isinstance(err, TimeoutError):
                cause += f" (last attempt: {err})"
        return BootFailed(cause, console_tail=console_tail, log_tail=log_tail)

    # -- stop ---------------------------------------------------------------------------------

    async def shutdown(self, *, port: int, grace_s: float) -> str:
        """Agent ``system.shutdown``, then Ctrl-Alt-Del, then SIGKILL; how it ended."""
        asking = min(grace_s, SHUTDOWN_CALL_TIMEOUT_S)
        with contextlib.suppress(GuestUnreachable, TimeoutError, OSError):
            with anyio.fail_after(asking):
                stream = await connect_vsock(
                    self.paths.vsock_socket,
                    port,
                    deadline_s=asking,
                    still_running=self._gone_reason,
                )
                async with GuestClient(stream) as client:
                    await client.call("system.shutdown", timeout=asking)
            if await self._exited_within(grace_s):
                return "the guest shut down"
        if self.process.running():
            with contextlib.suppress(VMOperationFailed):
                await self.api.action("SendCtrlAltDel")
            if await self._exited_within(grace_s):
                return "the guest shut down on Ctrl-Alt-Del"
        await self.kill()
        return "the VMM was killed"

    async def _exited_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await self.process.wait()
        return not self.process.running()

    async def kill(self) -> None:
        """SIGKILL the VMM (if alive), wait, unlink its sockets, close the API client."""
        with anyio.CancelScope(shield=True):
            if self.process.running():
                await self.process.kill()
            else:
                with anyio.move_on_after(1):
                    await self.process.wait()
            await self.close()

    async def close(self) -> None:
        """Forget the VMM (it may keep running): close our handles on it."""
        with anyio.CancelScope(shield=True):
            await self.api.aclose()
        if not self.process.running():
            self.paths.remove_stale_sockets()
        self.process.close()

    # -- snapshots ----------------------------------------------------------------------------

    async def snapshot(self, state_path: Path, memory_path: Path) -> None:
        """Pause the VM and write a full snapshot (the VM stays paused)."""
        await self.api.set_state("Paused")
        await self.api.put(
            "snapshot_create",
            SnapshotCreateParams(
                snapshot_path=self.paths.api_view(state_path),
                mem_file_path=self.paths.api_view(memory_path),
            ),
        )

    async def load_snapshot(self, params: SnapshotLoadParams) -> None:
        try:
            await self.api.put("snapshot_load", params)
        except FirecrackerAPIError:
            raise
        except VMOperationFailed as err:
            # Firecracker exits when a load fails: say why, from its log.
            raise VMOperationFailed(
                f"{err}; Firecracker's log:\n{_tail_file(self.paths.vmm_log)}"
            ) from err


# Warnings Firecracker prints on every boot (after GET /vm/config, on InstanceStart): noise here.
_ROUTINE_LOG_LINES = ("If the VM was restored from snapshot", "immediate_exit enabled")


def _tail_file(path: Path, lines: int = 10) -> str:
    try:
        data = path.read_bytes()[-8192:]
    except OSError:
        return "(no log)"
    kept = [
        line
        for line in data.decode(errors="replace").splitlines()
        if line.strip() and not any(routine in line for routine in _ROUTINE_LOG_LINES)
    ]
    return "\n".join(kept[-lines:]) or "(nothing unusual)"
