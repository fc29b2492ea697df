"""The ``lima`` driver: project VMs as Lima 2.x instances, driven through ``limactl``.

Modules, from the bottom up:

- ``limactl``: the CLI as async calls, ``list --json`` parsing, failures translated to driver
  errors;
- ``instances``: lifecycle verbs that check ``limactl list`` first (Lima 2.x's traps);
- ``limayaml``: the generated ``lima.yaml`` of a per-project instance;
- ``records``: one host-side record per VM (instance name, labels, spec);
- ``guest``, ``guest_launcher``, ``channel``: scripts in the guest, and the agent's channel
  through ``limactl shell``;
- ``per_project``, ``shared``: the two modes; ``driver``: ``LimaDriver``, which ties them up.
"""

from vm_drivers.lima.driver import LimaDriver

__all__ = ["LimaDriver"]
