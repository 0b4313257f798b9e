#!/usr/bin/env bash
# Build the testcontainers backend's image without any container registry.
#
# debootstrap makes a minimal Debian bookworm root file system that includes
# postgresql-15 and postgresql-15-cron (from Debian's own mirror), and
# `docker import` turns it into an image following the same contract as
# docker/Dockerfile: entrypoint docker/entrypoint.sh, user postgres, command
# `postgres`, pg_cron preloaded in $POSTGRES_DB.
#
# Cheap to repeat: nothing happens when the image exists already, and the root
# file system is kept as a tarball under $KRONOS_IMAGE_CACHE (with the .deb
# files), so a rebuild after `docker rmi` is one `docker import`. Building needs
# root; not being root, the script runs itself again through sudo.
#
#   scripts/build-image.sh            # image kronos-pg-cron:15 (or $KRONOS_IMAGE)
#   KRONOS_IMAGE_REBUILD=1 scripts/build-image.sh   # build the root fs afresh
set -euo pipefail

image=${KRONOS_IMAGE:-kronos-pg-cron:15}
cache=${KRONOS_IMAGE_CACHE:-/var/tmp/kronos-image}
mirror=${KRONOS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")/.." && pwd)
rootfs_tar=$cache/bookworm-pg15-cron.tar

# Needs no root when the image exists and the engine answers this user.
if [ "${KRONOS_IMAGE_REBUILD:-0}" != 1 ] \
    && docker image inspect "$image" >/dev/null 2>&1
then
    echo "image: $image exists (KRONOS_IMAGE_REBUILD=1 to build it again)"
    exit 0
fi

# debootstrap, chroot and docker import need root: not being root, run this
# script again through sudo, keeping its settings.
if [ "$(id -u)" != 0 ]; then
    self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
    if ! command -v sudo >/dev/null 2>&1; then
        echo "image: building $image needs root (debootstrap), but this is not" \
            "root and sudo is missing. Run as root: bash $self" >&2
        exit 1
    fi
    echo "image: building $image needs root (debootstrap); using sudo"
    exec sudo env KRONOS_IMAGE="$image" KRONOS_IMAGE_CACHE="$cache" \
        KRONOS_DEBIAN_MIRROR="$mirror" \
        KRONOS_IMAGE_REBUILD="${KRONOS_IMAGE_REBUILD:-0}" bash "$self"
fi

# debootstrap lives in /usr/sbin, which a PATH may lack even for root.
export PATH="$PATH:/usr/sbin:/sbin"
for tool in debootstrap docker; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "image: $tool not found; run 'scripts/install-system-deps.sh docker'" >&2
        exit 1
    fi
done

mkdir -p "$cache/debs"

if [ "${KRONOS_IMAGE_REBUILD:-0}" = 1 ] || [ ! -s "$rootfs_tar" ]; then
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT

    echo "image: debootstrap bookworm with postgresql-15 and pg_cron into $root"
    debootstrap --variant=minbase --cache-dir="$cache/debs" \
        --include=postgresql-15,postgresql-15-cron \
        bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
            echo "image: debootstrap failed; last lines of $cache/debootstrap.log:" >&2
            tail -n 20 "$cache/debootstrap.log" >&2
            exit 1
        }

    # The package's own cluster and caches are not part of the image: the
    # entrypoint initialises $PGDATA on first start.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15" \
        "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* \
        "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale"

    install -m 0755 "$here/docker/entrypoint.sh" \
        "$root/usr/local/bin/docker-entrypoint.sh"
    mkdir -p "$root/var/run/postgresql" "$root/var/lib/postgresql/data"
    chroot "$root" chown postgres:postgres /var/run/postgresql \
        /var/lib/postgresql /var/lib/postgresql/data
    chmod 2775 "$root/var/run/postgresql"
    chmod 0700 "$root/var/lib/postgresql/data"

    tar -C "$root" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$root"
    trap - EXIT
fi

image_path=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin
image_path=$image_path:/usr/sbin:/usr/bin:/sbin:/bin
echo "image: docker import $rootfs_tar as $image"
docker import \
    --change "ENV PATH=$image_path" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'ENV POSTGRES_DB=kronos' \
    --change 'ENV POSTGRES_HOST_AUTH_METHOD=trust' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'USER postgres' \
    --change 'WORKDIR /var/lib/postgresql' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    "$rootfs_tar" "$image" >/dev/null
echo "image: built $image"
