"""The ``process`` driver: the real guest agent as a plain subprocess over a directory.

**No isolation at all**: commands run as the server's user with the server's view of the
host. It exists so every machine, including one without bubblewrap or a container engine, can
run the whole behaviour suite against the real agent; it is never chosen automatically, and
``projectvm doctor`` and the README say what it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar

from vm_drivers.base import Availability, DriverContext, VMDriver
from vm_drivers.config import ProcessDriverConfig
from vm_drivers.host_process import HostProcessDriver, HostVMRecord

__all__ = ["NO_ISOLATION", "ProcessDriver"]

NO_ISOLATION = (
    "NO ISOLATION: commands run as this server's user and see the whole host; for tests and "
    "development only, never chosen automatically"
)


class ProcessDriver(HostProcessDriver):
    name: ClassVar[str] = "process"

    def __init__(self, config: ProcessDriverConfig, context: DriverContext) -> None:
        super().__init__(config.root_dir or context.data_dir / "process", context)
        self.config = config

    def _python(self) -> str:
        return self.config.python or sys.executable

    def agent_command(self, record: HostVMRecord, agent: Path) -> list[str]:
        return [self._python(), str(agent), "--root", str(self.workspace_dir(record.vm_id))]

    def agent_environment(self, record: HostVMRecord) -> dict[str, str]:
        # What a VM's agent would start with: the workspace as home, nothing of the server's.
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.workspace_dir(record.vm_id)),
            "LANG": "C.UTF-8",
            "PROJECTVM_PROJECT_ID": record.project_id,
        }

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept by this driver (shown by get_project)."""
        return (
            "server checks only: the workspace is a host directory (the process driver "
            "isolates nothing); API writes past max_storage_gb are refused and usage is "
            "measured after every command"
        )

    async def probe(self) -> Availability:
        python = self._python()
        if not os.access(python, os.X_OK):
            return Availability(
                driver=self.name, usable=False, reason=f"{python} is not executable"
            )
        return Availability(
            driver=self.name,
            usable=True,
            reason=f"runs the guest agent as a plain process; {NO_ISOLATION}",
            details={"python": python, "isolation": "none"},
            automatic=False,
        )


_: type[VMDriver] = ProcessDriver
