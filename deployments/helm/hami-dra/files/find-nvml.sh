#!/bin/sh
# Waits for the NVIDIA driver under the driver root mounted at
# $NVIDIA_DRIVER_ROOT, then links its libnvidia-ml.so.1 at $NVML_LINK, the
# path the plugin is given with --nvml-library-path. The plugin's own glibc
# stays in charge: only NVML itself comes from the host.
#
# The GPU Operator installs the driver after the node has joined, and its
# driver container mounts it at /run/nvidia/driver only once it is built, so
# the plugin pod may start first: this waits instead of failing (a failing
# init container would crash-loop with growing back-off delays).
#
# Environment:
#   NVIDIA_DRIVER_ROOT   the host's driver root, mounted (e.g. /driver-root)
#   NVML_LINK            the symbolic link to create
#   WAIT_TIMEOUT         seconds to wait for the driver; 0 (default) waits forever
#   WAIT_INTERVAL        seconds between looks (default 5)
set -eu

root="${NVIDIA_DRIVER_ROOT:?NVIDIA_DRIVER_ROOT is not set}"
link="${NVML_LINK:?NVML_LINK is not set}"
timeout="${WAIT_TIMEOUT:-0}"
interval="${WAIT_INTERVAL:-5}"

find_nvml() {
	for dir in \
		usr/lib/x86_64-linux-gnu usr/lib/aarch64-linux-gnu usr/lib64 \
		lib/x86_64-linux-gnu lib/aarch64-linux-gnu lib64 usr/lib lib \
		usr/lib/wsl/lib; do
		if [ -e "$root/$dir/libnvidia-ml.so.1" ]; then
			echo "$root/$dir/libnvidia-ml.so.1"
			return 0
		fi
	done
	return 1
}

waited=0
while ! lib=$(find_nvml); do
	if [ "$timeout" -gt 0 ] && [ "$waited" -ge "$timeout" ]; then
		echo "hami-dra: no libnvidia-ml.so.1 under $root after ${waited}s (the chart value nvidiaDriverRoot);" >&2
		echo "hami-dra: is the NVIDIA driver installed there? Set nvidiaDriverRoot (platforms/*.yaml) or nvmlLibraryPath" >&2
		exit 1
	fi
	# One line a minute, not one per look.
	if [ $((waited % 60)) -eq 0 ]; then
		echo "hami-dra: waiting for the NVIDIA driver: no libnvidia-ml.so.1 under $root yet (${waited}s)"
	fi
	sleep "$interval"
	waited=$((waited + interval))
done
mkdir -p "$(dirname "$link")"
ln -sfn "$lib" "$link"
echo "hami-dra: NVML is $lib"
