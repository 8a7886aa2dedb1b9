"""Emulated /proc and /sys files per container, as pure renderers.

A container's cgroups are read into a `snapshot.CgroupSnapshot`, the host's own /proc
figures into a `hostfacts.HostFacts`; each module renders one file from the two and the
current time, in the kernel's format. `registry` lists every emulated path. See
docs/emulation.md.
"""
