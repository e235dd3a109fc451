#!/bin/sh
# Installs libvgpu.so of one version on the host, once.
#
# The library lands at $LIBVGPU_HOST_DIR/$LIBVGPU_VERSION/libvgpu.so. That file
# is never rewritten: containers bind-mount it and have it mapped, and
# rewriting a mapped library crashes them. A new version goes to a new
# directory. The file appears atomically (hard link of a complete temporary
# copy, which fails if the name exists), so a concurrent installer (old and new
# plugin pod during a rolling update) or a crash half-way never leaves a
# truncated library behind.
#
# Environment:
#   LIBVGPU_VERSION   version to install (required)
#   LIBVGPU_HOST_DIR  host directory of all versions, mounted here (required)
#   LIBVGPU_SRC_DIR   where the image keeps libvgpu.so.<version>
#                     (default /opt/hami-dra/lib)
#   MOUNTINFO         the mount table to check (default /proc/self/mountinfo)
set -eu

version="${LIBVGPU_VERSION:?LIBVGPU_VERSION is not set}"
host_dir="${LIBVGPU_HOST_DIR:?LIBVGPU_HOST_DIR is not set}"
src_dir="${LIBVGPU_SRC_DIR:-/opt/hami-dra/lib}"
mountinfo="${MOUNTINFO:-/proc/self/mountinfo}"

# mount_options DIR prints the per-mount options (rw,nosuid,noexec,...) of
# the mount that holds DIR: the longest mount point that is DIR or one of its
# parents, the last one listed when mounts are stacked. The host directory is
# bind-mounted here, and bind mounts keep the flags of their source.
mount_options() {
	awk -v p="$1" '
		{ mp = $5
		  if (mp == p || mp == "/" || index(p, mp "/") == 1) {
			if (length(mp) >= best) { best = length(mp); opts = $6 }
		  } }
		END { print opts }' "$mountinfo"
}

# On a noexec mount the dynamic loader cannot map the library: it prints
# "cannot be preloaded ... ignored" and the workload runs WITHOUT limits.
# Refuse such a directory rather than install a library that never loads.
case ",$(mount_options "$host_dir")," in
*,noexec,*)
	echo "hami-dra: $host_dir is on a noexec mount ($(mount_options "$host_dir")): workloads cannot preload libvgpu.so from it (the dynamic loader skips it and the container runs without limits)." >&2
	echo "hami-dra: set the chart value libvgpu.hostDir to a directory on an executable, writable host mount (GKE/Container-Optimized OS: /home/kubernetes/bin/hami-dra; see platforms/*.yaml)." >&2
	exit 1
	;;
esac

src="$src_dir/libvgpu.so.$version"
dir="$host_dir/$version"
dst="$dir/libvgpu.so"

if [ ! -f "$src" ]; then
	echo "hami-dra: this image has no libvgpu.so.$version; it carries:" >&2
	ls "$src_dir" >&2 || true
	echo "hami-dra: set the chart value libvgpu.version to the version the image was built with" >&2
	exit 1
fi

same() { cmp -s "$src" "$dst"; }

if [ -e "$dst" ]; then
	if same; then
		echo "hami-dra: libvgpu $version already installed at $dst"
		exit 0
	fi
	echo "hami-dra: $dst exists with different content; refusing to overwrite a library that running containers may have mapped." >&2
	echo "hami-dra: build the image with a new version (or set libvgpu.version to a new value)." >&2
	exit 1
fi

if ! mkdir -p "$dir"; then
	echo "hami-dra: cannot create $dir: libvgpu.hostDir must be writable on the host (read-only /usr on Container-Optimized OS, Flatcar, Talos, Bottlerocket: see platforms/*.yaml)." >&2
	exit 1
fi
tmp="$dir/.libvgpu.so.$$.tmp"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0444 "$tmp"
sync "$tmp" 2>/dev/null || sync
if ln "$tmp" "$dst" 2>/dev/null; then
	sync "$dir" 2>/dev/null || sync
	echo "hami-dra: installed libvgpu $version at $dst"
	exit 0
fi
# Another installer created it first: accept it only if it is the same library.
if [ -e "$dst" ] && same; then
	echo "hami-dra: libvgpu $version already installed at $dst"
	exit 0
fi
echo "hami-dra: could not install $dst" >&2
exit 1
