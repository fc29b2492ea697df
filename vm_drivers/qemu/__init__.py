"""The ``qemu`` driver (QEMU microvm) and the pieces it is made of: QMP, process, channel."""

from vm_drivers.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
