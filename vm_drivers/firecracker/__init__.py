"""The ``firecracker`` driver: one Firecracker microVM per project, over its real REST API.

- :mod:`.api` — pydantic models of every request and answer the driver exchanges, checked
  against the official OpenAPI spec by a test, and the async client over the API socket.
- :mod:`.vsock` — the host side of Firecracker's vsock ``CONNECT`` handshake.
- :mod:`.process` — the Firecracker process: runtime directory, sockets, console log, pidfile.
- :mod:`.disks` — per-project ext4 data disks and their exclusive locks.
- :mod:`.launch` — the command line: Firecracker directly, or under its jailer.
- :mod:`.network` — a tap device for projects that allow egress.
- :mod:`.machine` — one VMM: pre-boot configuration, InstanceStart, the agent's hello, stop.
- :mod:`.boot` — bringing a VM up (cold or from a snapshot) and tearing everything down.
- :mod:`.records` — what is kept on disk per VM.
- :mod:`.probe` — whether Firecracker can run guests here (a cached, timed boot probe).
- :mod:`.driver` — :class:`~.driver.FirecrackerDriver`, the ``VMDriver`` over all of the above.

Nothing here is imported unless the firecracker driver is chosen.
"""
