"""Mount tables for the policy unit tests (shaped like a runc user-namespaced container)."""

# The container's attach-time table (its init's /proc/<pid>/mountinfo).
RUNC_INIT = """\
67 44 254:0 /tmp/pol-sample/rootfs / rw,relatime - ext4 /dev/vda rw,discard
68 67 0:41 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
69 67 0:42 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,uid=100000,gid=100000
70 69 0:43 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
71 69 0:44 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
72 69 0:40 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
73 67 0:22 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs rw
86 73 0:45 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
87 86 0:29 /pol-sample-1 /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu
97 69 0:6 /null /dev/null rw,relatime - devtmpfs devtmpfs rw,mode=755
103 67 254:0 /srv/ro\\040vol /data ro,nosuid,nodev,relatime - ext4 /dev/vda rw
45 68 0:41 /bus /proc/bus ro,relatime - proc proc rw
48 68 0:41 /sys /proc/sys ro,relatime - proc proc rw
49 68 0:46 / /proc/acpi ro,relatime - tmpfs tmpfs ro,uid=100000,gid=100000
50 68 0:6 /null /proc/keys rw,relatime - devtmpfs devtmpfs rw,mode=755
51 68 0:6 /null /proc/kcore rw,relatime - devtmpfs devtmpfs rw,mode=755
52 73 0:47 / /sys/firmware ro,relatime - tmpfs tmpfs ro,uid=100000,gid=100000
"""

# Later, in the same namespace: the container's own tmpfs, and a procfs the daemon mounted
# (with its masks) at /mnt/p.
RUNC_LATER = RUNC_INIT + """\
110 67 0:60 / /tmp rw,relatime - tmpfs tmpfs rw
111 67 0:61 / /mnt/p rw,relatime - proc proc rw
112 111 0:6 /null /mnt/p/kcore rw,relatime - devtmpfs devtmpfs rw,mode=755
113 111 0:61 /sys /mnt/p/sys ro,relatime - proc proc rw
"""

# After `unshare -m` and a chroot into /data-less view: new mount ids, same (dev, root);
# plus a bind copy of a subdirectory of the read-only volume and a copy of /proc/sys.
UNSHARED = """\
200 199 254:0 /tmp/pol-sample/rootfs / rw,relatime - ext4 /dev/vda rw,discard
201 200 0:41 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
202 201 0:41 /sys /proc/sys ro,relatime - proc proc rw
203 201 0:6 /null /proc/kcore rw,relatime - devtmpfs devtmpfs rw,mode=755
204 200 254:0 /srv/ro\\040vol/sub /mnt/copy ro,nosuid,nodev,relatime - ext4 /dev/vda rw
205 200 0:41 /sys /mnt/sys ro,relatime - proc proc rw
206 200 0:60 / /tmp rw,relatime - tmpfs tmpfs rw
"""
