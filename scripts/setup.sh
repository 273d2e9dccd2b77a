#!/usr/bin/env bash
# Set up a Debian 12 machine to build, run and test cs: the system packages
# it and its tests use, then the npm dependencies (which also builds dist/).
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: a real OCI registry for tests; skopeo, umoci: peer tools for
# interop tests and benchmarks; apache2-utils: htpasswd; openssl: test certificates;
# zstd, attr (setfattr), e2fsprogs: layers and images; erofs-utils: fsck.erofs checks cs's images in tests; python3: xattr checks in tests;
# qemu-system-x86, qemu-utils (qemu-img for workspace disk overlays), busybox-static, kmod, gcc, libc6-dev: microVM workspaces (QEMU, the guest's
# init, module indexing, the guest agent); lz4, xz-utils: unpacking the kernel for a PVH boot;
# debootstrap: a Debian base image built locally; fakeroot: images built by an unprivileged user get their layers' owners, devices and xattrs;
# time: GNU time, the peak memory of a whole `cs` run in benchmarks (`npm run bench -- assemble`);
# xfsprogs: a loop-mounted XFS in tests, where images built on cached ones share their blocks (reflinks).
packages=(git ca-certificates python3 openssl zstd attr erofs-utils e2fsprogs docker-registry skopeo umoci apache2-utils
  qemu-system-x86 qemu-utils busybox-static kmod gcc libc6-dev lz4 xz-utils debootstrap fakeroot time xfsprogs)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

npm ci --no-audit --no-fund
