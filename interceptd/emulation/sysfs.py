"""/sys paths presented empty, and the per-container DMI product UUID.

The directories hold the host's debugfs, tracefs, LSM policy, the kernel's config and the
firmware's tables (ACPI, EFI variables, DMI): a container has nothing to read or write
there. product_uuid is the machine's identity, which software licences and cluster
agents key on: each container gets its own, stable across restarts of the same id.
"""

from __future__ import annotations

import uuid

EMPTY_DIRS = (
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
    "/sys/kernel/security",
    "/sys/kernel/config",
    "/sys/firmware",
)
PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"
# The namespace of every container's product UUID (uuid5 of this and the container id).
UUID_NAMESPACE = uuid.UUID("5f0c2c4e-7d1e-4a8e-9b3f-6a1d2e4c8b10")


def product_uuid(container_id: str) -> bytes:
    if not container_id:
        raise ValueError("a product UUID needs a container id")
    return f"{uuid.uuid5(UUID_NAMESPACE, container_id)}\n".encode()
