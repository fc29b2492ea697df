"""The ``projectvm`` command: serve, quickstart, doctor, agents, projects, image, gc."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable

import anyio

from guest_runtime.errors import ProjectVMError
from server import __version__
from server.cli.admin import agents, gc, projects
from server.cli.common import say
from server.cli.costs import costs
from server.cli.doctor import doctor
from server.cli.images import image
from server.cli.limits import limits
from server.cli.serve import quickstart, serve

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

Command = Callable[[argparse.Namespace], Awaitable[None]]
COMMANDS: dict[str, Command] = {
    "serve": serve,
    "quickstart": quickstart,
    "doctor": doctor,
    "agents": agents,
    "projects": projects,
    "image": image,
    "gc": gc,
    "costs": costs,
    "limits": limits,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projectvm",
        description="MCP server giving agents a shared, isolated, persistent VM per project.",
    )
    parser.add_argument(
        "--data-dir",
        help="where ProjectVM keeps its state (default: $PROJECTVM_HOME or "
        "$XDG_DATA_HOME/projectvm)",
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server (stdio, or --http)")
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"HTTP address (default {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="extra Host header value accepted over HTTP (e.g. behind a proxy); repeatable",
    )
    serve.add_argument("--agent", help="stdio: the agent this session acts as (default: OS user)")
    serve.add_argument("--driver", help="VM driver for new projects (default: auto)")

    quick = commands.add_parser(
        "quickstart", help="self-check, then serve HTTP with a fresh token for an agent"
    )
    quick.add_argument("--agent", default="quickstart", help="agent to issue a token for")
    quick.add_argument("--host", default=DEFAULT_HOST)
    quick.add_argument("--port", type=int, default=DEFAULT_PORT)
    quick.add_argument("--driver", help="VM driver for new projects (default: auto)")

    doctor = commands.add_parser("doctor", help="which VM drivers work here, and why not")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument(
        "--measure",
        action="store_true",
        help="also create a VM on each usable driver, time its boot and first command, and "
        "destroy it",
    )
    doctor.add_argument("--driver", help="check this driver choice (default: auto)")

    agents = commands.add_parser("agents", help="manage agent identities and tokens")
    agent_commands = agents.add_subparsers(dest="agents_command", required=True)
    add = agent_commands.add_parser("add", help="create an agent and print its token once")
    add.add_argument("name")
    add.add_argument("--quiet", action="store_true", help="print only the token")
    token = agent_commands.add_parser("token", help="replace an agent's token, print it once")
    token.add_argument("name")
    token.add_argument("--quiet", action="store_true", help="print only the token")
    agent_commands.add_parser("list", help="list agents")
    remove = agent_commands.add_parser("remove", help="delete an agent and its token")
    remove.add_argument("name")

    projects = commands.add_parser("projects", help="inspect projects")
    project_commands = projects.add_subparsers(dest="projects_command", required=True)
    project_list = project_commands.add_parser("list", help="list every project")
    project_list.add_argument("--json", action="store_true")

    image = commands.add_parser("image", help="the project runtime image, for every driver")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser(
        "build",
        help="build the runtime image from Debian packages (no registry): the docker image, "
        "the VM drivers' boot artifacts and the local sandbox's root",
    )
    build.add_argument("--template", default="runtime", choices=["runtime", "minimal"])
    build.add_argument(
        "--for",
        dest="targets",
        default="auto",
        help="docker, vm, or both (docker,vm); default: what this machine can run",
    )
    build.add_argument("--tag", help="docker image name (default projectvm/TEMPLATE:VERSION)")
    build.add_argument("--mirror", help="Debian mirror (default: the one apt uses here)")
    build.add_argument(
        "--rebuild", action="store_true", help="make the root filesystem anew even if current"
    )
    pushing = image_commands.add_parser(
        "push",
        help="push the runtime image with the agent baked in to a registry (for the fly "
        "driver), no Docker engine needed; prints it pinned by digest",
    )
    pushing.add_argument(
        "--to",
        help="registry/repository:tag (default: the fly driver's image, "
        "registry.fly.io/projectvm-runtime:VERSION)",
    )
    pushing.add_argument("--template", default="runtime", choices=["runtime", "minimal"])
    pushing.add_argument("--username", default="x", help="registry user (Fly: x)")
    pushing.add_argument(
        "--password-env",
        default="FLY_API_TOKEN",
        help="environment variable holding the registry password or token (default "
        "FLY_API_TOKEN; none = no credentials)",
    )
    pushing.add_argument("--mirror", help="Debian mirror, if the root filesystem is built")
    status = image_commands.add_parser("status", help="every image artifact, its size and hash")
    status.add_argument("--json", action="store_true")

    gc = commands.add_parser(
        "gc", help="find VMs, volumes and workspaces that belong to no project; --yes removes"
    )
    gc.add_argument("--yes", action="store_true", help="remove what was found")
    gc.add_argument("--json", action="store_true")
    gc.add_argument(
        "--all-installations",
        action="store_true",
        help="list the resources of every ProjectVM installation on the backends, by id "
        "(e.g. one whose data directory was deleted)",
    )
    gc.add_argument(
        "--instance",
        metavar="ID",
        help="with --yes, remove every resource of this other installation (ids from "
        "--all-installations)",
    )

    cost = commands.add_parser(
        "costs", help="this month's (or --month's) cost of each project on a metered driver"
    )
    cost.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    cost.add_argument("--json", action="store_true")

    limit = commands.add_parser(
        "limits", help="the limits this server enforces (config.toml [limits]) and what they mean"
    )
    limit.add_argument("--json", action="store_true")
    limit.add_argument("--markdown", action="store_true", help="as a Markdown table")
    limit.add_argument(
        "--defaults", action="store_true", help="the built-in defaults, not this config's values"
    )

    commands.add_parser("version", help="print the version")
    return parser


def _reportable(err: BaseException) -> BaseException | None:
    """The error to tell the user about: ours or the system's, found inside task groups."""
    if isinstance(err, ProjectVMError | OSError):
        return err
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            found = _reportable(inner)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.command == "version":
        say(f"projectvm {__version__}")
        return 0
    try:
        anyio.run(COMMANDS[args.command], args)
    except KeyboardInterrupt:
        return 130
    except BaseException as err:
        if isinstance(err, BaseExceptionGroup) and err.subgroup(KeyboardInterrupt) is not None:
            return 130
        reportable = _reportable(err)
        if reportable is None:
            raise
        # One line that says what was asked for and what went wrong; no traceback.
        sys.stderr.write(f"projectvm {args.command}: {reportable}\n")
        return 1
    return 0
