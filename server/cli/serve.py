"""``projectvm serve`` and ``projectvm quickstart``."""

from __future__ import annotations

import argparse
import sys

from guest_runtime.errors import ProjectVMError
from server import __version__
from server.cli.common import default_agent_name, load_config, say
from server.core.requests import CreateProject, DeleteProject, RunCommand, WriteFile
from server.core.service import open_service
from server.surfaces.http.serve import serve_http
from server.surfaces.mcp.server import build_server

__all__ = ["quickstart", "serve"]


async def serve(args: argparse.Namespace) -> None:
    config = load_config(args)
    if not args.http:
        handle = build_server(config, transport="stdio", agent=args.agent or default_agent_name())
        await handle.mcp.run_stdio_async()
        return
    handle = build_server(config, transport="http", agent=None)

    def ready(url: str) -> None:
        sys.stderr.write(
            f"ProjectVM {__version__} serving MCP at {url} (data: {config.data_dir})\n"
            f"REST API at {url.removesuffix('/mcp')}/api/v1 "
            f"(docs: {url.removesuffix('/mcp')}/api/v1/docs)\n"
            f"Dashboard at {url.removesuffix('/mcp')}/ (sign in with an agent token)\n"
            "Every request needs Authorization: Bearer <token> "
            "(create one with: projectvm agents add NAME)\n"
        )
        sys.stderr.flush()

    await serve_http(handle, args.host, args.port, allowed_hosts=args.allowed_host, on_ready=ready)


async def quickstart(args: argparse.Namespace) -> None:
    """Check the machine works end to end, then serve over HTTP with a fresh token."""
    config = load_config(args)
    say(f"ProjectVM {__version__} quickstart — data directory {config.data_dir}")
    async with open_service(config) as service:
        say(f"driver: {service.default_driver}")
        agent = args.agent
        known = await service.store.agents.get(agent)
        token = await service.agents.issue_token(agent, replace=known is not None)

        say("self-check: create a project, write a file, run a command that reads it ...")
        info = await service.act(
            agent, CreateProject(name="quickstart-check", description="created by quickstart")
        )
        try:
            await service.act(
                agent,
                WriteFile(
                    project_id=info.project_id, path="hello.txt", content="hello from ProjectVM\n"
                ),
            )
            result = await service.act(
                agent,
                RunCommand(
                    project_id=info.project_id,
                    command="cat hello.txt && uname -sr && echo cwd=$(pwd)",
                ),
            )
            for line in result.stdout.splitlines():
                say(f"    {line}")
            if result.exit_code != 0:
                raise ProjectVMError(f"the self-check command failed: {result.stderr.strip()}")
        finally:
            await service.act(agent, DeleteProject(project_id=info.project_id))
        say("self-check passed.")

    handle = build_server(config, transport="http", agent=None)

    def ready(url: str) -> None:
        header = f'"Authorization: Bearer {token}"'
        claude = f"claude mcp add --transport http projectvm {url} --header {header}"
        say()
        say(f"MCP endpoint : {url}")
        say(f"REST API     : {url.removesuffix('/mcp')}/api/v1   (docs: .../api/v1/docs)")
        say(f"dashboard    : {url.removesuffix('/mcp')}/   (sign in with the token below)")
        say(f"agent        : {agent}")
        say(f"token        : {token}   (shown once; stored only as a hash)")
        say()
        say("Connect Claude Code:")
        say(f"  {claude}")
        say("Or any MCP client: streamable HTTP, header Authorization: Bearer <token>.")
        say("More agents: projectvm agents add NAME.   Stop with Ctrl-C.")

    await serve_http(handle, args.host, args.port, on_ready=ready)
