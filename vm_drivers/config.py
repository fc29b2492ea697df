"""One pydantic config per driver, joined in a tagged union on ``type``.

Each config imports its driver only when ``build`` is called, so choosing ``local`` never imports
the Docker SDK and a missing optional backend costs nothing until it is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from vm_drivers.base import DriverContext

if TYPE_CHECKING:
    from vm_drivers.base import VMDriver

__all__ = ["DriverConfig", "LocalDriverConfig", "parse_driver_config"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalDriverConfig(_Config):
    """bubblewrap sandboxes on this host: the zero-setup default on Linux."""

    type: Literal["local"] = "local"
    bwrap: str = Field(default="bwrap", description="bubblewrap executable (name or path)")
    python: str | None = Field(
        default=None,
        description="python3 run inside the sandbox; default: the first system python3 that "
        "is visible inside it (/usr/bin, /usr/local/bin)",
    )
    root_dir: Path | None = Field(
        default=None, description="where workspaces and sandbox state live; default DATA_DIR/local"
    )
    hidden_paths: list[str] = Field(
        default_factory=lambda: ["/home", "/root", "/run", "/tmp", "/mnt", "/media", "/srv"],
        description="host directories not visible in the sandbox (the rest of / is read-only); "
        "ProjectVM's own data directory is always hidden",
    )

    def build(self, context: DriverContext) -> VMDriver:
        from vm_drivers.local import LocalDriver

        return LocalDriver(self, context)


DriverConfig = Annotated[LocalDriverConfig, Field(discriminator="type")]

_ADAPTER: TypeAdapter[DriverConfig] = TypeAdapter(DriverConfig)


def parse_driver_config(data: dict[str, object]) -> DriverConfig:
    """Validate a driver config from a mapping such as ``{"type": "local"}``."""
    return _ADAPTER.validate_python(data)
