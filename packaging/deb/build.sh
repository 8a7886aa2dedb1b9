#!/bin/bash
# Build interceptd_<version>_amd64.deb with dpkg-deb from this tree (make deb).
# Usage: build.sh OUTDIR   (needs `make setup` first: the C core and python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$repo/build}" && cd "${1:-$repo/build}" && pwd)
# setup.py's version; the upgrade test builds a newer one (INTERCEPTD_DEB_VERSION).
version=${INTERCEPTD_DEB_VERSION:-$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' "$repo/setup.py")}
arch=$(dpkg --print-architecture)
root=$(mktemp -d "$out/deb-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
lib=$root/usr/lib/interceptd
doc=$root/usr/share/doc/interceptd
share=$root/usr/share/interceptd

[ -f "$repo/interceptd/_core.abi3.so" ] || { echo "no C core: run make setup" >&2; exit 1; }

# The package in a private directory of Debian's python3 (no venv: the cffi
# module is built against it and needs only python3-cffi-backend).
install -d -m 0755 "$lib" "$root/usr/bin" "$root/usr/sbin" "$doc" "$share"
(cd "$repo" && find interceptd -name '*.py' -o -name '_core.abi3.so' -o -name 'launcher.c') |
  while read -r f; do install -D -m 0644 "$repo/$f" "$lib/$f"; done
strip --strip-unneeded "$lib/interceptd/_core.abi3.so"
# The eBPF program's source: the loader compiles it from beside the package.
install -D -m 0644 "$repo/bpf/syscalls.bpf.c" "$lib/bpf/syscalls.bpf.c"
install -d -m 0755 "$lib/interceptd-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: interceptd\nVersion: %s\n' "$version" \
  > "$lib/interceptd-$version.dist-info/METADATA"
chmod 0644 "$lib/interceptd-$version.dist-info/METADATA"
for prog in interceptd:interceptd.daemon interceptctl:interceptd.cli; do
  name=${prog%%:*} mod=${prog#*:}
  printf '#!/usr/bin/python3 -I\nimport sys\nsys.path.insert(0, "/usr/lib/interceptd")\nfrom %s import main\nsys.exit(main())\n' \
    "$mod" > "$root/usr/bin/$name"
  chmod 0755 "$root/usr/bin/$name"
done
# The native launcher, pointing at the installed package and Debian's python3.
(cd "$repo" && .venv/bin/python -c 'import sys
from interceptd.runtime.launcher import build
build(sys.argv[1], python="/usr/bin/python3", pkgroot="/usr/lib/interceptd")' \
  "$root/usr/sbin/interceptd-runc")
strip --strip-unneeded "$root/usr/sbin/interceptd-runc"
# The createContainer hook binding the /proc/sys values, beside its Python module
# (emulbinds.py finds it there; every directory above it is 0755: the container's
# root runs it).
(cd "$repo" && .venv/bin/python -c 'import sys
from interceptd.runtime.launcher import build_hook
build_hook(sys.argv[1])' "$lib/interceptd/runtime/interceptd-sysctl-hook")
strip --strip-unneeded "$lib/interceptd/runtime/interceptd-sysctl-hook"
# runc/crun links first in dockerd's and containerd's PATH (the drop-ins).
install -d -m 0755 "$lib/runtime-path"
ln -s ../../../sbin/interceptd-runc "$lib/runtime-path/runc"
ln -s ../../../sbin/interceptd-runc "$lib/runtime-path/crun"

install -D -m 0644 "$repo/packaging/systemd/interceptd.service" \
  "$root/lib/systemd/system/interceptd.service"
install -D -m 0644 "$repo/packaging/interceptd.toml" "$root/etc/interceptd/interceptd.toml"
# Docker/containerd snippets: shipped, not activated (making every container go
# through the shim is the admin's choice; docs/operations.md shows how).
for f in docker/daemon.json containerd/interceptd.toml \
         systemd/docker.service.d/interceptd.conf systemd/containerd.service.d/interceptd.conf; do
  install -D -m 0644 "$repo/packaging/$f" "$share/$f"
  sed -i -e 's|/usr/local/bin/interceptd-runc|/usr/sbin/interceptd-runc|g' \
         -e 's|/usr/local/lib/interceptd/runtime-path|/usr/lib/interceptd/runtime-path|g' "$share/$f"
done

install -m 0644 "$repo/README.md" "$repo/docs/operations.md" "$doc/"
install -m 0644 "$here/copyright" "$doc/copyright"
printf 'interceptd (%s) unstable; urgency=medium\n\n  * Built from the source tree.\n\n -- interceptd maintainers <interceptd@example.org>  %s\n' \
  "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  "$here/control" > "$root/DEBIAN/control"
echo /etc/interceptd/interceptd.toml > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$root/DEBIAN/$s"; done
find "$root" -name __pycache__ -prune -exec rm -rf {} +
deb="$out/interceptd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
