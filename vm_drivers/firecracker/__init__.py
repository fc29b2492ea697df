"""The ``firecracker`` driver: one Firecracker microVM per project, over its real REST API.

- :mod:`.api` — pydantic models of every request and answer the driver exchanges, checked
  against the official OpenAPI spec by a test, and the async client over the API socket.
- :mod:`.process` — the Firecracker process: runtime directory, sockets, console log, pidfile.
- :mod:`.vsock` — the host side of Firecracker's vsock ``CONNECT`` handshake.
- :mod:`.disks` — per-project ext4 data disks and their exclusive locks.
- :mod:`.machine` — one VM's boot: the pre-boot configuration, InstanceStart, the agent's hello.
- :mod:`.driver` — :class:`FirecrackerDriver`, the ``VMDriver`` over all of the above.

Nothing here is imported unless the firecracker driver is chosen.
"""
