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
set -eu

version="${LIBVGPU_VERSION:?LIBVGPU_VERSION is not set}"
host_dir="${LIBVGPU_HOST_DIR:?LIBVGPU_HOST_DIR is not set}"
src_dir="${LIBVGPU_SRC_DIR:-/opt/hami-dra/lib}"

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

mkdir -p "$dir"
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
