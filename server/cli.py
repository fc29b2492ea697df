"""The ``projectvm`` command: serve, quickstart, doctor, agents, projects, version."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from guest_runtime.errors import ProjectVMError
from server import __version__
from server.config import ServerConfig

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def default_agent_name() -> str:
    """The OS user as an agent id (lowercased, other characters replaced)."""
    from server.app import default_user

    name = re.sub(r"[^a-z0-9._-]", "-", default_user().lower()).strip("-._") or "agent"
    return name[:64]


def _config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig.load(
        Path(args.data_dir) if args.data_dir else None, driver=getattr(args, "driver", None)
    )


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- serve --------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from server.app import build_server

    config = _config(args)
    if not args.http:
        handle = build_server(config, transport="stdio", agent=args.agent or default_agent_name())
        await handle.mcp.run_stdio_async()
        return
    from server.http import serve_http

    handle = build_server(config, transport="http", agent=None)

    def ready(url: str) -> None:
        sys.stderr.write(
            f"ProjectVM {__version__} serving MCP at {url} (data: {config.data_dir})\n"
            "Every request needs Authorization: Bearer <token> "
            "(create one with: projectvm agents add NAME)\n"
        )
        sys.stderr.flush()

    await serve_http(handle, args.host, args.port, allowed_hosts=args.allowed_host, on_ready=ready)


# -- quickstart ---------------------------------------------------------------------------


async def _quickstart(args: argparse.Namespace) -> None:
    """Check the machine works end to end, then serve over HTTP with a fresh token."""
    from server.app import build_server, open_service
    from server.auth import issue_token
    from server.http import serve_http

    config = _config(args)
    _print(f"ProjectVM {__version__} quickstart — data directory {config.data_dir}")
    async with open_service(config) as service:
        _print(f"driver: {service.default_driver}")
        agent = args.agent
        token = await issue_token(
            service.store, agent, replace=(await service.store.get_agent(agent)) is not None
        )
        _print("self-check: create a project, write a file, run a command that reads it ...")
        info = await service.create_project(agent, "quickstart-check", "created by quickstart")
        try:
            await service.files.write(agent, info.project_id, "hello.txt", "hello from ProjectVM\n")
            result = await service.executions.run(
                agent, info.project_id, "cat hello.txt && uname -sr && echo cwd=$(pwd)"
            )
            for line in result.stdout.splitlines():
                _print(f"    {line}")
            if result.exit_code != 0:
                raise ProjectVMError(f"the self-check command failed: {result.stderr.strip()}")
        finally:
            await service.lifecycle.delete(agent, info.project_id)
        _print("self-check passed.")

    handle = build_server(config, transport="http", agent=None)

    def ready(url: str) -> None:
        header = f'"Authorization: Bearer {token}"'
        claude = f"claude mcp add --transport http projectvm {url} --header {header}"
        _print()
        _print(f"MCP endpoint : {url}")
        _print(f"agent        : {agent}")
        _print(f"token        : {token}   (shown once; stored only as a hash)")
        _print()
        _print("Connect Claude Code:")
        _print(f"  {claude}")
        _print("Or any MCP client: streamable HTTP, header Authorization: Bearer <token>.")
        _print("More agents: projectvm agents add NAME.   Stop with Ctrl-C.")

    await serve_http(handle, args.host, args.port, on_ready=ready)


# -- doctor -------------------------------------------------------------------------------


async def _doctor(args: argparse.Namespace) -> None:
    from vm_drivers.base import DriverContext
    from vm_drivers.registry import DriverSet, available_driver_names, platform_preference

    config = _config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    report: dict[str, Any] = {"version": __version__, "data_dir": str(config.data_dir)}
    try:
        rows = []
        for name in available_driver_names():
            availability = await drivers.probe(name)
            rows.append(availability.model_dump())
        report["drivers"] = rows
        report["preference"] = platform_preference(environment=os.environ.get("VM_SERVICE"))
        try:
            report["selected"] = await drivers.choose(config.driver)
        except ProjectVMError as err:
            report["selected"] = None
            report["selection_error"] = str(err)
    finally:
        await drivers.aclose()
    if args.json:
        _print(json.dumps(report, indent=2))
        return
    _print(f"ProjectVM {__version__}   data directory: {config.data_dir}")
    for row in report["drivers"]:
        mark = "ok " if row["usable"] else "-- "
        _print(f"  {mark}{row['driver']:<12} {row['reason']}")
        for key, value in row["details"].items():
            _print(f"       {key}: {value}")
    _print(f"automatic choice order here: {', '.join(report['preference'])}")
    if report["selected"]:
        _print(f"new projects will use: {report['selected']}")
    else:
        _print(f"no driver can be used: {report.get('selection_error')}")


# -- images -------------------------------------------------------------------------------


async def _image(args: argparse.Namespace) -> None:
    """Build the project runtime image with no registry, or report whether it exists."""
    import shutil

    from guest_runtime.image.rootfs import IMAGE_VERSION, build_rootfs, tar_rootfs
    from vm_drivers.base import DriverContext
    from vm_drivers.docker import DockerDriver
    from vm_drivers.registry import DriverSet

    config = _config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        driver = drivers.get("docker")
        assert isinstance(driver, DockerDriver)
        availability = await driver.probe()
        engine = availability.details.get("engine")
        if engine is None:
            raise ProjectVMError(availability.reason)
        if args.image_command == "status":
            _print(f"engine: {engine}")
            for key, value in availability.details.items():
                if key.startswith("image "):
                    _print(f"{key}: {value}")
            return
        tag = args.tag or f"projectvm/{args.template}:{IMAGE_VERSION}"
        work = Path(args.work_dir or config.data_dir / "build") / args.template
        rootfs, archive = work / "rootfs", work / "rootfs.tar"
        _print(f"building {tag} from Debian packages (no registry) on {engine}")
        try:
            await build_rootfs(rootfs, args.template, mirror=args.mirror, progress=_print)
            await tar_rootfs(rootfs, archive, progress=_print)
            await driver.import_rootfs(archive, tag, progress=_print)
        finally:
            if not args.keep:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
        _print(f"done: {tag}")
    finally:
        await drivers.aclose()


# -- garbage collection -------------------------------------------------------------------


async def _gc(args: argparse.Namespace) -> None:
    from server.gc import collect_garbage
    from server.store import Store
    from vm_drivers.base import DriverContext
    from vm_drivers.registry import DriverSet

    config = _config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        async with await Store.open(config.db_path) as store:
            report = await collect_garbage(store, drivers, remove=args.yes)
    finally:
        await drivers.aclose()
    if args.json:
        _print(report.model_dump_json(indent=2))
        return
    for name, reason in report.skipped_drivers.items():
        _print(f"skipped {name}: {reason}")
    if not report.strays:
        _print("nothing to collect: every VM of this installation belongs to a project")
    for vm in report.strays:
        state = "removed" if vm.vm_id in report.removed else "stray"
        _print(f"{state:<8} {vm.driver:<7} {vm.vm_id}  project={vm.project_id}  {vm.detail}")
    if report.strays and not args.yes:
        _print(f"{len(report.strays)} stray VM(s); run `projectvm gc --yes` to remove them")
    if report.foreign:
        _print(f"left alone: {len(report.foreign)} VM(s) of other ProjectVM installations")


# -- agents and projects ------------------------------------------------------------------


async def _with_store(args: argparse.Namespace, action: Callable[[Any], Awaitable[None]]) -> None:
    from server.store import Store

    config = _config(args)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(config.db_path) as store:
        await action(store)


async def _agents(args: argparse.Namespace) -> None:
    from server.app import default_user
    from server.auth import issue_token
    from server.errors import InvalidInput

    async def action(store: Any) -> None:
        if args.agents_command in ("add", "token"):
            token = await issue_token(
                store,
                args.name,
                replace=args.agents_command == "token",
                user=default_user(),
            )
            if args.quiet:
                _print(token)
                return
            _print(f"agent {args.name}: token (shown once, keep it safe):")
            _print(token)
        elif args.agents_command == "list":
            for agent in await store.list_agents():
                seen = agent.last_seen_at.isoformat() if agent.last_seen_at else "never"
                token = "token" if agent.has_token else "no token (stdio only)"
                created = f"{agent.created_at:%Y-%m-%d}"
                _print(f"{agent.agent_id:<24} {token:<22} created {created}  seen {seen}")
        elif args.agents_command == "remove":
            owned = [p for p in await store.list_projects() if p.owner_id == args.name]
            if owned:
                raise InvalidInput(
                    f"agent {args.name!r} owns {len(owned)} project(s) "
                    f"({', '.join(p.project_id for p in owned[:5])}); delete them first"
                )
            if not await store.remove_agent(args.name):
                raise InvalidInput(f"no agent {args.name!r}")
            _print(f"removed agent {args.name}; its token no longer works")

    await _with_store(args, action)


async def _projects(args: argparse.Namespace) -> None:
    async def action(store: Any) -> None:
        projects = await store.list_projects()
        if args.json:
            _print(json.dumps([p.model_dump(mode="json") for p in projects], indent=2))
            return
        if not projects:
            _print("no projects")
        for p in projects:
            _print(
                f"{p.project_id}  {p.vm_status:<10} {p.driver:<8} owner={p.owner_id:<16} {p.name}"
            )

    await _with_store(args, action)


# -- argument parsing ---------------------------------------------------------------------


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

    image = commands.add_parser("image", help="the project runtime image (docker driver)")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser(
        "build", help="build the runtime image from Debian packages and import it (no registry)"
    )
    build.add_argument("--template", default="runtime", choices=["runtime", "minimal"])
    build.add_argument("--tag", help="image name (default projectvm/TEMPLATE:VERSION)")
    build.add_argument("--mirror", help="Debian mirror (default: the one apt uses here)")
    build.add_argument("--work-dir", help="scratch directory (default DATA_DIR/build)")
    build.add_argument("--keep", action="store_true", help="keep the root filesystem and tar")
    image_commands.add_parser("status", help="is the engine up and the runtime image there")

    gc = commands.add_parser(
        "gc", help="find VMs, volumes and workspaces that belong to no project; --yes removes"
    )
    gc.add_argument("--yes", action="store_true", help="remove what was found")
    gc.add_argument("--json", action="store_true")

    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    handlers: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
        "serve": _serve,
        "quickstart": _quickstart,
        "doctor": _doctor,
        "agents": _agents,
        "projects": _projects,
        "image": _image,
        "gc": _gc,
    }
    if args.command == "version":
        _print(f"projectvm {__version__}")
        return 0
    try:
        anyio.run(handlers[args.command], args)
    except KeyboardInterrupt:
        return 130
    except ProjectVMError as err:
        sys.stderr.write(f"projectvm: {err}\n")
        return 1
    except OSError as err:
        sys.stderr.write(f"projectvm: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
