#!/bin/bash
# Runs libvgpu's tests against the fake driver. Every "ok"/"not ok" line and
# every failed program counts; the last line is "N passed, M failed".
set -u
B=$(cd "${1:-build}" && pwd)
VT=$B/tests/vt
LT=$B/tests/limtest
W=$(mktemp -d /tmp/vgpu-test.XXXXXX)
trap 'rm -rf "$W"' EXIT
PASS=0
FAIL=0
PRE=$B/libvgpu.so
[ -n "${VGPU_ASAN:-}" ] && PRE="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so):$B/libvgpu.so"

# t NAME [VAR=VALUE...] -- command...   (fresh fake GPU and region per test)
t() {
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    rm -f "$W/fg" "$W/region" "$W"/pause*
    local out rc
    out=$(env -u CUDA_DEVICE_MEMORY_LIMIT -u CUDA_VISIBLE_DEVICES LD_LIBRARY_PATH="$B/fake" FAKE_GPU_STATE="$W/fg" \
        CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/region" LD_PRELOAD="$PRE" "${envs[@]}" "$@" 2>"$W/stderr")
    rc=$?
    local p f
    p=$(grep -c '^ok ' <<<"$out")
    f=$(grep -c '^not ok ' <<<"$out")
    echo "== $name"
    sed 's/^/   /' <<<"$out"
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "   not ok - $name exited with $rc"; f=1
        sed 's/^/   stderr: /' "$W/stderr" | tail -5
    elif [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
        # a program that checks nothing has not passed
        echo "   not ok - $name printed no results (exit status $rc)"; f=1
        sed 's/^/   stderr: /' "$W/stderr" | tail -5
    fi
    PASS=$((PASS + p)); FAIL=$((FAIL + f))
}

# check NAME CONDITION-COMMAND...  (a plain assertion in the runner)
check() {
    local name=$1; shift
    if "$@"; then echo "   ok - $name"; PASS=$((PASS + 1)); else echo "   not ok - $name"; FAIL=$((FAIL + 1)); fi
}

for path in linked dlsym procaddr; do
    t "every allocation API is limited ($path)" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT apis $path 4
done
t "driver hands out internal addresses: map by name and version" FAKE_PROCADDR_INTERNAL=1 CUDA_DEVICE_MEMORY_LIMIT=1024m -- $VT apis procaddr 4
t "HAMi units: bytes" CUDA_DEVICE_MEMORY_LIMIT=$((768 << 20)) -- $VT apis linked 3
t "HAMi units: KiB, per-device variable wins" CUDA_DEVICE_MEMORY_LIMIT=4g CUDA_DEVICE_MEMORY_LIMIT_0=$((512 << 10))k -- $VT apis linked 2
for path in linked dlsym procaddr; do
    t "cuMemGetInfo, cuDeviceTotalMem and NVML report the quota ($path)" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT meminfo $path 1024
done
t "free is bounded by what is physically free" FAKE_GPU_MEM=1536m CUDA_DEVICE_MEMORY_LIMIT=1g -- \
    bash -c "LD_PRELOAD= CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/other $VT hold 1024 $W/pause-ready & sleep 0.3; $VT physfree; kill %1"
t "two GPUs with different quotas" FAKE_GPU_COUNT=2 CUDA_DEVICE_MEMORY_LIMIT_0=1g CUDA_DEVICE_MEMORY_LIMIT_1=512m -- $VT two 4 2
t "quota index follows VGPU_DEVICE_UUIDS, not the ordinal" FAKE_GPU_COUNT=2 \
    VGPU_DEVICE_UUIDS=GPU-fa4e0000-0000-0000-0000-000000000001,GPU-fa4e0000-0000-0000-0000-000000000000 \
    CUDA_DEVICE_MEMORY_LIMIT_0=1g CUDA_DEVICE_MEMORY_LIMIT_1=512m -- $VT two 2 4
t "CUDA_VISIBLE_DEVICES ordinals without a UUID list" FAKE_GPU_COUNT=2 CUDA_VISIBLE_DEVICES=1 \
    CUDA_DEVICE_MEMORY_LIMIT_0=512m -- $VT two 2
t "NVML maps host order to quota index by UUID" FAKE_GPU_COUNT=2 \
    VGPU_DEVICE_UUIDS=GPU-fa4e0000-0000-0000-0000-000000000001,GPU-fa4e0000-0000-0000-0000-000000000000 \
    CUDA_DEVICE_MEMORY_LIMIT_0=1g CUDA_DEVICE_MEMORY_LIMIT_1=512m -- bash -c "$VT nvml 0 512 && $VT nvml 1 1024"
t "NVML with CUDA_VISIBLE_DEVICES, no UUID list" FAKE_GPU_COUNT=2 CUDA_VISIBLE_DEVICES=1 \
    CUDA_DEVICE_MEMORY_LIMIT_0=512m -- $VT nvml 1 512
t "8 processes x 4 threads never exceed the quota" FAKE_GPU_MEM=4g CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT concurrent 8 4 1024
t "SIGKILL while holding memory: usage reclaimed" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT kill holding 1024 $W/pause1
t "SIGKILL inside the critical section: no stranded lock, usage reclaimed" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT kill inlock 1024 $W/pause2
t "forked child takes its own slot" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT fork 1024
t "dlsym interception and RTLD_NEXT" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT dlsym
t "RTLD_NEXT relative to the caller" CUDA_DEVICE_MEMORY_LIMIT=1g -- $B/tests/rtldnext

# Region files that are not ours.
region_case() { # name, how to spoil the file
    local name=$1 spoil=$2
    rm -f "$W/fg" "$W/region"
    LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
        CUDA_DEVICE_MEMORY_LIMIT=1g $VT fillcount >/dev/null 2>&1
    eval "$spoil"
    local out
    out=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
        CUDA_DEVICE_MEMORY_LIMIT=1g $VT fillcount 2>"$W/stderr")
    echo "== region $name: $out; $(grep -o 'invalid.*' "$W/stderr" | head -1)"
    check "region $name: limit still enforced" grep -q 'fit=4 last=2 total=1024' <<<"$out"
    check "region $name: reported" grep -q 'reinitialising' "$W/stderr"
    check "region $name: reinitialised to a valid region" bash -c "[ \$(stat -c %s $W/region) -eq \$(stat -c %s $W/region.good) ]"
}
rm -f "$W/region"; LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
    CUDA_DEVICE_MEMORY_LIMIT=1g $VT fillcount >/dev/null 2>&1; cp "$W/region" "$W/region.good"
region_case corrupt "dd if=/dev/urandom of=$W/region bs=4096 count=4 conv=notrunc status=none"
region_case truncated "truncate -s 100 $W/region"
region_case "other version" "printf '\\x63' | dd of=$W/region bs=1 seek=4 conv=notrunc status=none"
region_case "empty header, right size" "dd if=/dev/zero of=$W/region bs=256 count=1 conv=notrunc status=none"

# A corrupt region that another live process still maps: not reinitialised,
# process-local accounting with the same limit.
rm -f "$W/fg" "$W/region" "$W/ready"
export_env="LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE CUDA_DEVICE_MEMORY_LIMIT=1g"
env $export_env $VT hold 256 "$W/ready" >/dev/null 2>&1 &
HOLD=$!
for i in $(seq 100); do [ -e "$W/ready" ] && break; sleep 0.05; done
printf 'XXXX' | dd of="$W/region" bs=1 seek=0 conv=notrunc status=none
out=$(env $export_env FAKE_GPU_MEM=16g $VT fillcount 2>"$W/stderr")
kill $HOLD 2>/dev/null; wait $HOLD 2>/dev/null
echo "== region corrupt while in use: $out; $(grep -o 'shared region.*' "$W/stderr" | head -1)"
check "corrupt region in use: limit still enforced per process" grep -q 'fit=4 last=2 total=1024' <<<"$out"
check "corrupt region in use: reported, falls back to process-local" grep -q 'process-local' "$W/stderr"

# No limit: exactly the driver's behaviour.
rm -f "$W/fg"
a=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg FAKE_GPU_MEM=2g $VT fillcount 2>&1)
rm -f "$W/fg"
b=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg FAKE_GPU_MEM=2g LD_PRELOAD=$PRE CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region.nolimit $VT fillcount 2>&1)
echo "== no limit: without libvgpu '$a', with '$b'"
check "no limit set behaves exactly like the driver" [ "$a" = "$b" ]
check "no limit: no region file is created" [ ! -e "$W/region.nolimit" ]

source "$(dirname "$0")/mem_tests.sh"

if [ -x "$LT" ] && [ -z "${VGPU_SKIP_LIMITER:-}" ]; then
    source "$(dirname "$0")/limiter_tests.sh"
fi

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
