"""Building the project runtime image with no registry: a Debian rootfs tree in, images out.

:func:`~guest_runtime.image.builder.build_image` lays down the tree once (debootstrap, then
apt) and hands it to each :class:`~guest_runtime.image.builder.ImageOutput`: a Docker Engine
image (:mod:`~guest_runtime.image.docker_image`), and for the VM drivers an ext4 disk image.
"""
