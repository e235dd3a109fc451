#!/bin/sh
# Finds the host driver's libnvidia-ml.so.1 under the driver root mounted at
# $NVIDIA_DRIVER_ROOT and links it at $NVML_LINK, the path the plugin is
# given with --nvml-library-path. The plugin's own glibc stays in charge:
# only NVML itself comes from the host.
#
# Environment:
#   NVIDIA_DRIVER_ROOT  the host's driver root, mounted (e.g. /driver-root)
#   NVML_LINK           the symbolic link to create
set -eu

root="${NVIDIA_DRIVER_ROOT:?NVIDIA_DRIVER_ROOT is not set}"
link="${NVML_LINK:?NVML_LINK is not set}"

for dir in \
	usr/lib/x86_64-linux-gnu usr/lib/aarch64-linux-gnu usr/lib64 \
	lib/x86_64-linux-gnu lib/aarch64-linux-gnu lib64 usr/lib lib \
	usr/lib/wsl/lib; do
	lib="$root/$dir/libnvidia-ml.so.1"
	if [ -e "$lib" ]; then
		mkdir -p "$(dirname "$link")"
		ln -sfn "$lib" "$link"
		echo "hami-dra: NVML is $lib"
		exit 0
	fi
done
echo "hami-dra: no libnvidia-ml.so.1 under $root (the chart value nvidiaDriverRoot);" >&2
echo "hami-dra: is the NVIDIA driver installed, or set nvmlLibraryPath" >&2
exit 1
