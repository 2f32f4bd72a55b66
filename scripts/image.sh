#!/usr/bin/env bash
# Builds the gong-pipeline image without a Docker daemon or a registry, into podman's default
# store as localhost/gong-pipeline:<workspace version>, and prints its size and digest.
#
#   scripts/image.sh                 # build the binaries, the runtime base if missing, the image
#   scripts/image.sh --no-build      # use the binaries already in target/image/
#   scripts/image.sh --rebuild-base  # remake the runtime base from current Debian packages
#
# 1. The runtime base, localhost/gong-runtime-base:bookworm, a distroless-like root file system
#    made from Debian bookworm packages (mmdebstrap --variant=extract, then `podman import`):
#    base-files, netbase, tzdata, ca-certificates, libc6, libgcc-s1, libssl3, libstdc++6, zlib1g
#    and nothing they pull in (no shell, no package manager, no perl, no openssl binary); a CA
#    bundle made from the ca-certificates package alone; /etc/passwd with nonroot (65532); runs as
#    65532:65532. Made once and kept in podman's store.
# 2. The binaries, built on the host with the cargo profile `image` (release without debug info;
#    Cargo.toml) so nothing is compiled twice.
# 3. The Dockerfile's runtime stage, offline: `podman build --pull=never` with the base as
#    RUNTIME_BASE and `--build-context builder=DIR`, so its `COPY --from=builder /out/...` takes
#    the host-built binaries instead of building the builder stage.
#
# Needs podman, runc and mmdebstrap (scripts/setup.sh --test installs them) and root (podman's
# root store; mmdebstrap's root mode). Docker users with registry access build the same
# Dockerfile directly (docs/operations.md, "Build the image").
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=1
REBUILD_BASE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    -h|--help)
      sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { echo "image: $*"; }
die() { echo "image: $*" >&2; exit 1; }

for tool in podman runc mmdebstrap dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run scripts/setup.sh --test (apt-get install podman runc mmdebstrap)"
done
[ "$(id -u)" -eq 0 ] || die "needs root (podman's root store, mmdebstrap --mode=root)"

VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || die "cannot read [workspace.package] version from Cargo.toml"
IMAGE=localhost/gong-pipeline:$VERSION
BASE=localhost/gong-runtime-base:bookworm
BINS=(gong-ingest gong-enrich gong-load)
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# 100 MiB: the image must stay small enough to pull quickly on every node.
MAX_BYTES=$((100 * 1024 * 1024))
# Containers here: runc (crun fails on this kernel's cgroups).
PODMAN=(podman --runtime runc)

# Debian mirrors for the base; DEBIAN_MIRROR replaces deb.debian.org.
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
SUITES=(
  "deb $MIRROR/debian bookworm main"
  "deb $MIRROR/debian bookworm-updates main"
  "deb $MIRROR/debian-security bookworm-security main"
)
KEEP_PACKAGES=(base-files netbase tzdata ca-certificates libc6 libgcc-s1 libssl3 libstdc++6 zlib1g)

work=$(mktemp -d "${TMPDIR:-/tmp}/gong-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- 1. the runtime base ---------------------------------------------------------------------
# Removes what the dependency resolution added beyond KEEP_PACKAGES and what no program in the
# image reads (maintainer tools, manuals, docs except copyright notices), then writes the files a
# package's maintainer scripts would have made (extract runs none of them).
finish_root() { # root dir
  local root=$1 deb pkg path
  local keep=" ${KEEP_PACKAGES[*]} "
  mkdir -p "$root/var/lib/dpkg/status.d"
  for deb in "$root"/var/cache/apt/archives/*.deb; do
    pkg=$(dpkg-deb -f "$deb" Package)
    if [[ $keep == *" $pkg "* ]]; then
      # Package metadata where scanners look for it in distroless images.
      dpkg-deb -f "$deb" >"$root/var/lib/dpkg/status.d/$pkg"
      continue
    fi
    dpkg-deb --fsys-tarfile "$deb" | tar -t | while IFS= read -r path; do
      path=${path#./}
      if [ -n "$path" ] && { [ -L "$root/$path" ] || [ -f "$root/$path" ]; }; then
        rm -f "$root/$path"
      fi
    done
  done
  for pkg in "${KEEP_PACKAGES[@]}"; do
    [ -s "$root/var/lib/dpkg/status.d/$pkg" ] || die "package $pkg was not extracted"
  done
  # mmdebstrap's copies of the host's resolv.conf and hostname (the runtime mounts its own), and
  # glibc's iconv modules (8 MB; nothing in a Rust binary calls iconv).
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  rm -rf "$root/usr/lib/x86_64-linux-gnu/gconv" "$root/usr/lib/aarch64-linux-gnu/gconv" \
    "$root/etc/dpkg/dpkg.cfg.d"
  rm -rf "$root/var/cache/apt" "$root/var/lib/apt" "$root/etc/apt" "$root/var/log/apt" \
    "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
    "$root/usr/share/bash-completion" "$root/usr/share/gdb" "$root/usr/share/gcc" \
    "$root/usr/share/pixmaps" "$root/usr/share/debconf" "$root/var/cache/debconf" \
    "$root/usr/sbin/update-ca-certificates" "$root/usr/share/ca-certificates/.placeholder"
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  # Empty directories left by the removed packages (the FHS skeleton of base-files stays).
  find "$root/usr/share" "$root/usr/lib" "$root/usr/bin" "$root/usr/sbin" -mindepth 1 -depth -type d -empty -delete
  find "$root/var/lib/dpkg" -maxdepth 1 -type f -delete

  # The CA bundle update-ca-certificates would make from the package's certificates (Mozilla's
  # list) and nothing else: the host's own authorities never enter the image.
  find "$root/usr/share/ca-certificates/mozilla" -name '*.crt' | LC_ALL=C sort | xargs cat \
    >"$root/etc/ssl/certs/ca-certificates.crt"
  [ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "empty CA bundle"

  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
EOF
  ln -sf /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"
  echo "Etc/UTC" >"$root/etc/timezone"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  install -d -m 0700 "$root/root"
  chmod 1777 "$root/tmp"
  ldconfig -r "$root"
}

build_base() {
  say "runtime base $BASE from Debian packages: ${KEEP_PACKAGES[*]}"
  local root=$work/rootfs
  local include
  include=$(IFS=,; echo "${KEEP_PACKAGES[*]}")
  # --skip=cleanup/apt/cache keeps the .deb files: finish_root reads their file lists.
  mmdebstrap --quiet --variant=extract --mode=root --format=directory \
    --include="$include" --skip=cleanup/apt/cache \
    bookworm "$root" "${SUITES[@]}" </dev/null
  finish_root "$root"
  if [ -e "$root/bin/sh" ] || [ -e "$root/usr/bin/sh" ] || [ -e "$root/usr/bin/bash" ]; then
    die "the runtime base has a shell"
  fi
  tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
  podman import --quiet \
    --change "LABEL gong.runtime-base.recipe=$RECIPE" \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --message "distroless-like runtime base: ${KEEP_PACKAGES[*]} (Debian bookworm)" \
    "$work/rootfs.tar" "$BASE" >/dev/null
  rm -rf "$root" "$work/rootfs.tar"
}

# A base made by another version of this recipe is made again.
RECIPE=$( { declare -f finish_root build_base; echo "${KEEP_PACKAGES[*]}" "${SUITES[*]}"; } \
  | sha256sum | cut -c1-16)
have_recipe=$(podman image inspect --format '{{index .Labels "gong.runtime-base.recipe"}}' "$BASE" 2>/dev/null || true)
if [ "$REBUILD_BASE" -eq 1 ] || [ "$have_recipe" != "$RECIPE" ]; then
  old_base=$(podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || true)
  build_base
else
  say "runtime base $BASE (recipe $RECIPE) is in podman's store; --rebuild-base takes current Debian updates"
fi

# --- 2. the binaries -------------------------------------------------------------------------
if [ "$BUILD" -eq 1 ]; then
  say "cargo build --profile image (${BINS[*]})"
  cargo build --locked --profile image "${BINS[@]/#/--bin=}"
fi
mkdir -p "$work/builder/out"
for bin in "${BINS[@]}"; do
  [ -x "$TARGET_DIR/image/$bin" ] || die "$TARGET_DIR/image/$bin is missing (run without --no-build)"
  cp "$TARGET_DIR/image/$bin" "$work/builder/out/$bin"
done

# --- 3. the image ----------------------------------------------------------------------------
# The build context is an empty directory: the runtime stage copies only from `builder`.
mkdir -p "$work/context"
old_image=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
say "podman build $IMAGE (Dockerfile, offline)"
"${PODMAN[@]}" build --quiet --pull=never \
  --build-arg RUNTIME_BASE="$BASE" \
  --build-context builder="$work/builder" \
  --label org.opencontainers.image.version="$VERSION" \
  -f Dockerfile -t "$IMAGE" "$work/context" >/dev/null

# The images this run replaced, unless a container still uses them.
for old in "$old_image" "${old_base:-}"; do
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
done

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
digest=$(podman image inspect --format '{{.Digest}}' "$IMAGE")
id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
echo "image: $IMAGE"
echo "  size:   $size bytes ($(( (size + 524288) / 1048576 )) MiB)"
echo "  digest: $digest"
echo "  id:     sha256:$id"
if [ "$size" -ge "$MAX_BYTES" ]; then
  die "the image is $size bytes, over the 100 MiB limit"
fi
