"""Server configuration: the data directory, the driver choice and the limits.

Everything lives under one data directory: ``--data-dir``, else ``$PROJECTVM_HOME``, else
``$XDG_DATA_HOME/projectvm`` (``~/.local/share/projectvm``). An optional ``config.toml`` there
sets the driver, per-driver options and limits; command-line flags override it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.domain.errors import InvalidInput

__all__ = [
    "CONFIG_FILENAME",
    "DB_FILENAME",
    "FlyPrices",
    "Limits",
    "Prices",
    "ServerConfig",
    "default_data_dir",
]

CONFIG_FILENAME = "config.toml"
DB_FILENAME = "projectvm.db"


def default_data_dir() -> Path:
    explicit = os.environ.get("PROJECTVM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "projectvm"


def _host_memory_mb() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_limit_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="stdout/stderr kept per command, from the start"
    )
    output_tail_bytes: int = Field(
        default=64 * 1024, ge=0, description="and from the end, when the output is longer"
    )
    max_file_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest file read or written in one call"
    )
    max_command_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="longest command line (with its env) run_command takes; write a script "
        "file for more",
    )
    max_history_page_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        description="output bytes one page of execution history returns at most (a page with "
        "outputs ends early when its outputs reach this; read on with next_cursor)",
    )
    concurrent_large_reads: int = Field(
        default=2,
        ge=1,
        description="file reads over 1 MiB served at once; more wait (bounds server memory)",
    )
    default_timeout_s: float = Field(default=600, gt=0, description="run_command default timeout")
    max_timeout_s: float = Field(default=24 * 3600, gt=0, description="largest timeout_s allowed")
    max_project_cpus: float | None = Field(
        default_factory=lambda: float(os.cpu_count() or 1),
        description="the most CPUs a project may ask for (default: this host's)",
    )
    max_project_memory_mb: int | None = Field(
        default_factory=lambda: _host_memory_mb(),
        description="the most memory a project may ask for (default: this host's); null = no cap",
    )
    max_project_storage_gb: float | None = Field(
        default=1024, description="the largest max_storage_gb a project may set; null = no cap"
    )
    max_project_pids: int | None = Field(
        default=4096, description="the largest pids_limit a project may set; null = no cap"
    )
    max_project_concurrent_executions: int | None = Field(
        default=64, description="the most commands a project may run at once"
    )
    # The HTTP server's defences against slow and idle clients (server/surfaces/http/
    # connections.py). With the defaults, a connection that is not being served is closed
    # within 30 s: 10 s for its headers, then 15 s for a trickled body; or after 15 s idle.
    http_request_header_timeout_s: float = Field(
        default=10,
        gt=0,
        description="an HTTP request's line and headers must all arrive within this many "
        "seconds of its first byte (of the connection's opening, for its first request); "
        "else the connection is closed",
    )
    http_request_body_timeout_s: float = Field(
        default=15,
        gt=0,
        description="an HTTP request body must arrive within this many seconds of its headers, "
        "plus one second per http_min_body_bytes_per_s bytes received; else the connection "
        "is closed",
    )
    http_min_body_bytes_per_s: int = Field(
        default=16 * 1024,
        ge=1,
        description="the upload rate that keeps a large request body within its deadline",
    )
    http_keep_alive_timeout_s: float = Field(
        default=15,
        gt=0,
        description="an HTTP connection idle between requests is closed after this many seconds",
    )
    http_max_connections: int = Field(
        default=1024,
        ge=1,
        description="the most HTTP connections open at once (never more than half the "
        "process's open-file limit, raised to its hard limit at start); a new one past it "
        "closes the connection that has waited longest without completing a request (else "
        "the longest idle), so new clients get in",
    )


class FlyPrices(BaseModel):
    """Fly.io's published prices (base region, USD per 30 days), as read on ``read_on``.

    Re-read https://fly.io/docs/about/pricing/ before quoting money, and set newer figures in
    config.toml under [prices.fly]; regions other than the base one cost more.
    """

    model_config = ConfigDict(extra="forbid")

    read_on: str = Field(default="2026-09-16", description="when these figures were read")
    machine_per_month: dict[str, float] = Field(
        default_factory=lambda: {
            # guest name -> price of its base memory (256 MB per shared CPU, 2 GB per
            # performance CPU) for 30 days started
            "shared-cpu-1x": 1.94,
            "shared-cpu-2x": 3.89,
            "shared-cpu-4x": 7.78,
            "shared-cpu-8x": 15.55,
            "performance-1x": 31.00,
            "performance-2x": 62.00,
            "performance-4x": 124.00,
            "performance-8x": 248.00,
            "performance-16x": 496.00,
        },
        description="price per 30 days started, per guest size at its base memory",
    )
    extra_memory_per_gb_month: float = Field(
        default=5.0, ge=0, description="each GB of memory above a size's base, per 30 days"
    )
    stopped_rootfs_per_gb_month: float = Field(
        default=0.15, ge=0, description="a stopped or suspended Machine's rootfs, per GB"
    )
    rootfs_gb: float = Field(
        default=1.0, ge=0, description="the size of the project image's rootfs (billed stopped)"
    )
    volume_per_gb_month: float = Field(
        default=0.15, ge=0, description="a volume's provisioned size, per GB for 30 days"
    )


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fly: FlyPrices = Field(default_factory=FlyPrices)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    driver: str = Field(default="auto", description="VM driver for new projects, or 'auto'")
    drivers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-driver options, by driver name"
    )
    limits: Limits = Field(default_factory=Limits)
    prices: Prices = Field(default_factory=Prices)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @classmethod
    def load(cls, data_dir: Path | None = None, **overrides: Any) -> ServerConfig:
        """Read ``config.toml`` from the data directory (if any) and apply ``overrides``."""
        directory = (data_dir or default_data_dir()).expanduser().absolute()
        values: dict[str, Any] = {}
        path = directory / CONFIG_FILENAME
        if path.exists():
            try:
                values = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise InvalidInput(f"cannot read {path}: {err}; fix or remove the file") from err
        values.update({key: value for key, value in overrides.items() if value is not None})
        values["data_dir"] = directory
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise InvalidInput(f"invalid configuration in {path}: {err}") from err
