#!/bin/bash
# make bench: the same calls without libvgpu and with it, side by side.
set -eu
B=$(cd "${1:-build}" && pwd)
W=$(mktemp -d /tmp/vgpu-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
common=(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region FAKE_GPU_MEM=64g)
env -u CUDA_DEVICE_MEMORY_LIMIT -u CUDA_DEVICE_SM_LIMIT "${common[@]}" "$B/bench/bench" > "$W/base"
env "${common[@]}" LD_PRELOAD="$B/libvgpu.so" "$B/bench/bench" > "$W/nolimit"
env "${common[@]}" LD_PRELOAD="$B/libvgpu.so" CUDA_DEVICE_MEMORY_LIMIT=32g "$B/bench/bench" alloc > "$W/memlimit"
env "${common[@]}" LD_PRELOAD="$B/libvgpu.so" CUDA_DEVICE_SM_LIMIT=50 "$B/bench/bench" launch > "$W/smlimit"
printf '\n%-30s %12s %14s %10s %7s %14s %14s\n' "call" "driver ns" "libvgpu ns" "added ns" "ratio" "configuration" "budget (ns)"
printf '%s\n' "------------------------------------------------------------------------------------------------"
row() { # file label budget
    while read -r name ns; do
        base=$(awk -v n="$name" '$1==n {print $2}' "$W/base")
        printf '%-30s %12.1f %14.1f %10.1f %7.2f %14s %14s\n' "$name" "$base" "$ns" "$(awk -v a="$ns" -v b="$base" 'BEGIN{print a-b}')" "$(awk -v a="$ns" -v b="$base" 'BEGIN{print a/b}')" "$2" "$3"
    done < "$1"
}
row "$W/nolimit" "no limit" "20 (launch)"
row "$W/memlimit" "memory limit" "1000 (alloc)"
row "$W/smlimit" "share 50%*" "200 (launch)"
echo
echo "(fake driver, best of 7 rounds of ${BENCH_LAUNCHES:-2000000} launches / 20k alloc+free pairs; added = libvgpu - driver."
echo " alloc row = one cuMemAlloc_v2 + one cuMemFree_v2. *share 50% with 0-ns kernels: the hook, its burst"
echo " bookkeeping and the end event recorded after every launch (the fake driver's cuEventRecord included);"
echo " the best round is the one the bucket did not throttle.)"
