"""The pieces of the ``local`` driver's bubblewrap sandbox, each on its own.

- :mod:`~vm_drivers.sandbox.identity` — who the sandbox's processes are on the host (a user
  namespace mapped to an unprivileged uid range when the server is root);
- :mod:`~vm_drivers.sandbox.root` — what the sandbox sees as ``/`` (the runtime image's tree, or
  a minimal read-only view of the host's ``/usr`` and a few ``/etc`` files);
- :mod:`~vm_drivers.sandbox.network` — user-mode networking (slirp4netns) for egress, in a
  network namespace of its own;
- :mod:`~vm_drivers.sandbox.launch` — the command line that starts a sandbox and the handshake
  that finishes it (id maps, network) before the guest agent runs;
- :mod:`~vm_drivers.sandbox.storage_watch` — ``max_storage_gb`` where the workspace cannot be a
  disk of its own: writers are stopped when it grows past the limit.
"""
