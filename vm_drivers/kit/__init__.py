"""The driver kit: shared, tested pieces every VM driver is built from.

- :mod:`~vm_drivers.kit.records` — one JSON record per VM, written atomically;
- :mod:`~vm_drivers.kit.locks` — a lock per key (per VM);
- :mod:`~vm_drivers.kit.naming` — VM ids and short backend names derived from project ids;
- :mod:`~vm_drivers.kit.streams` — byte streams to a guest: process stdio, a multiplexed
  attach stream, a unix socket, a stream with bytes already read in front (after a ``CONNECT``
  or HTTP upgrade handshake), and a line handshake;
- :mod:`~vm_drivers.kit.channels` — the one-channel-per-VM contract;
- :mod:`~vm_drivers.kit.lifecycle` — drivers as async context managers;
- :mod:`~vm_drivers.kit.workspace_disk` — a workspace as a sparse ext4 image, loop-mounted, so
  ``max_storage_gb`` is a filesystem's limit (local and docker, where the server can mount).
"""
