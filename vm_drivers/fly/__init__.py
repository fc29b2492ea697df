"""The ``fly`` driver: project VMs as Fly Machines (see ``driver``), through the Machines API.

``api`` is the typed HTTP client, ``models`` what it sends and reads, ``errors`` the translation
into the ProjectVM error tree, ``guest`` the sizing rules, ``state`` the driver's private state.
"""

from vm_drivers.fly.driver import FlyDriver

__all__ = ["FlyDriver"]
