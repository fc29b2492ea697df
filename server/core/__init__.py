"""The core: ProjectVM's business rules, for every surface.

``service.ProjectService`` is the facade the surfaces call; it builds the operations
(projects, members, executions, files, locks, the event feed), each of which takes only the
narrow things it needs: the store, the journal of events, the access policy, the runtimes and
the lifecycle of VMs. Nothing here knows MCP or HTTP.
"""
