# Memory accounting and process lifecycle under the driver's real rules
# (sourced by run_tests.sh: uses its t, check, $B, $W, $PRE, $VT).

# What the driver takes besides allocations: contexts.
t "contexts are charged: 4 claims whose quotas fill the GPU all get their contexts and quotas" \
    FAKE_GPU_MEM=4g FAKE_CTX_MEM=300m CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT claims 4 1024 300 "$W"
for how in data dataex fatbin library libfile; do
    t "a module load is charged ($how)" FAKE_GPU_MEM=4g FAKE_MODULE_MEM=128m CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT module 1024 128 $how
done
t "a context's charge is what the driver holds for it, not what others allocated during its creation" \
    FAKE_GPU_MEM=4g FAKE_CTX_MEM=128m FAKE_CTX_CREATE_MS=400 CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT ctxrace 1024 128 256 "$W"
t "kernels loaded lazily (CUDA_MODULE_LOADING=LAZY) are charged" FAKE_GPU_MEM=4g CUDA_MODULE_LOADING=LAZY \
    FAKE_KERNEL_MEM=128m CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT lazyload 1024 128 4
t "graph memory nodes are charged while the graph memory pool reserves them" FAKE_GPU_MEM=4g \
    CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT graphmem 1024 384
for version in v2 v3 v4 procaddr; do
    t "cuCtxCreate'd contexts are charged and returned at cuCtxDestroy ($version)" \
        FAKE_GPU_MEM=4g FAKE_CTX_MEM=256m CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT ctxcreate 1024 256 $version
done

# Stream-ordered frees, pools, VMM, arrays.
t "cuMemFreeAsync returns quota when the stream runs it" FAKE_GPU_MEM=4g CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT asyncfree 1024
t "cuMemFreeAsync of a cuMemAlloc'd pointer returns quota when the stream runs it" FAKE_GPU_MEM=4g \
    CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT asyncfreeplain 1024
t "pools: reserved memory stays charged until trimmed" FAKE_GPU_MEM=4g CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT pool 1024
t "VMM: cuMemRelease while mapped keeps the charge until the last unmap" FAKE_GPU_MEM=4g CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT vmm 1024
t "cuMemAllocFromPoolAsync is charged to the pool's device" FAKE_GPU_COUNT=2 CUDA_DEVICE_MEMORY_LIMIT_0=1g \
    CUDA_DEVICE_MEMORY_LIMIT_1=512m -- $VT pooldev 2
for model in all deferred; do
    t "every array format is charged what it takes (driver answers requirements for $model arrays)" FAKE_GPU_MEM=4g \
        FAKE_ARRAY_MEMREQ=$model CUDA_DEVICE_MEMORY_LIMIT=256m -- $VT arrays 256
done
t "cuMemCreate before cuInit does not switch limits off" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT early 4

# Process lifecycle.
t "a library constructor's allocations are limited" CUDA_DEVICE_MEMORY_LIMIT=1g -- $B/tests/ctortest 4
t "fork beside an NVML polling thread: children never hang" CUDA_DEVICE_MEMORY_LIMIT=1g -- $VT forknvml 100
t "allocation table that cannot grow: no hang, no leaked quota" CUDA_DEVICE_MEMORY_LIMIT=2g VT_FAIL_CALLOC_MIN=65536 \
    LD_PRELOAD="$B/tests/libfailcalloc.so:$PRE" -- $VT manysmall 1100 2048
t "a forwarding libcuda.so.1 (dlsym shim) does not recurse" CUDA_DEVICE_MEMORY_LIMIT=1g \
    LD_LIBRARY_PATH="$B/tests/shim:$B/fake" VT_SHIM_REAL="$B/fake/libcuda.so.1" -- $VT shim 4

# The region file: never follow a planted symlink, never block on a FIFO.
rm -f "$W/fg" "$W/region" "$W/victim"
printf 'precious' > "$W/victim"
ln -s "$W/victim" "$W/region"
out=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
    CUDA_DEVICE_MEMORY_LIMIT=1g timeout 20 $VT fillcount 2>"$W/stderr")
echo "== region is a symlink: $out; $(grep -o 'shared region.*' "$W/stderr" | head -1)"
check "symlinked region: the link's target is untouched" [ "$(cat "$W/victim")" = precious ]
check "symlinked region: limit still enforced" grep -q 'fit=4 last=2 total=1024' <<<"$out"
check "symlinked region: reported, process-local accounting" grep -q 'process-local' "$W/stderr"
rm -f "$W/region" "$W/fg"
mkfifo "$W/region"
out=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
    CUDA_DEVICE_MEMORY_LIMIT=1g timeout 20 $VT fillcount 2>"$W/stderr")
echo "== region is a FIFO: $out; $(grep -o 'shared region.*' "$W/stderr" | head -1)"
check "FIFO region: no hang, limit still enforced" grep -q 'fit=4 last=2 total=1024' <<<"$out"
check "FIFO region: reported, process-local accounting" grep -q 'process-local' "$W/stderr"
check "FIFO region: still a FIFO" [ -p "$W/region" ]
rm -f "$W/region"

# A region in use is never truncated: a second process with a different
# (corrupting) view must not shrink the file under the first one's mapping.
rm -f "$W/fg" "$W/region" "$W/ready"
LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
    CUDA_DEVICE_MEMORY_LIMIT=1g $VT hold 256 "$W/ready" >/dev/null 2>&1 &
HOLD=$!
for i in $(seq 100); do [ -e "$W/ready" ] && break; sleep 0.05; done
size_before=$(stat -c %s "$W/region")
out=$(LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/region LD_PRELOAD=$PRE \
    CUDA_DEVICE_MEMORY_LIMIT=1g $VT fillcount 2>"$W/stderr")
size_after=$(stat -c %s "$W/region")
kill $HOLD 2>/dev/null; wait $HOLD 2>/dev/null
echo "== region in use: $out (size $size_before -> $size_after)"
check "region in use: a second process shares it (3 x 256 MiB beside 256 MiB held)" grep -q 'fit=3 last=2' <<<"$out"
check "region in use: not truncated" [ "$size_before" = "$size_after" ]

# Loading: the lowest glibc symbol versions the code allows, and a libvgpu
# that cannot load or is misconfigured never breaks the processes it is in.
maxver=$(objdump -T "$B/libvgpu.so" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
echo "== libvgpu.so requires glibc $maxver at most"
check "libvgpu.so needs no glibc symbol newer than 2.17 (has $maxver)" \
    bash -c "[ \"\$(printf '%s\n' 2.17 $maxver | sort -V | tail -1)\" = 2.17 ]"
out=$(LD_PRELOAD=/nonexistent/libvgpu.so /bin/sh -c 'echo alive' 2>"$W/stderr")
echo "== preload that cannot be found: '$out'; $(head -1 "$W/stderr")"
check "a preload ld.so cannot load is skipped with a message, the process runs" \
    bash -c "[ '$out' = alive ] && grep -q 'cannot be preloaded' '$W/stderr'"
mkdir -p "$W/adir"
for bad in "CUDA_DEVICE_MEMORY_LIMIT=lots" "CUDA_DEVICE_MEMORY_LIMIT_0=-5g" "CUDA_DEVICE_SM_LIMIT=half" \
    "CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/adir" "CUDA_DEVICE_MEMORY_SHARED_CACHE=/proc/version" \
    "CUDA_DEVICE_MEMORY_SHARED_CACHE=/nonexistent/dir/region" "VGPU_DEVICE_UUIDS=,,,,,,,,,,,,,,,,,,,,,,," \
    "LIBCUDA_LOG_LEVEL=verbose" "VGPU_REAL_LIBCUDA=/nonexistent/libcuda.so" "VGPU_REAL_LIBNVML=/etc/passwd"; do
    rc=0
    out=$(env "$bad" CUDA_DEVICE_MEMORY_LIMIT_1=1g LD_LIBRARY_PATH=$B/fake FAKE_GPU_STATE=$W/fg LD_PRELOAD=$PRE \
        timeout 20 /bin/sh -c 'echo alive' 2>/dev/null) || rc=$?
    check "bad configuration $bad: the process still runs (rc $rc)" test "$rc" = 0 -a "$out" = alive
    rc=0
    env CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/region.bad" "$bad" CUDA_DEVICE_MEMORY_LIMIT_1=1g LD_LIBRARY_PATH=$B/fake \
        FAKE_GPU_STATE=$W/fg LD_PRELOAD=$PRE timeout 20 $VT fillcount >/dev/null 2>&1 || rc=$?
    check "bad configuration $bad: a CUDA program still runs (rc $rc)" [ "$rc" = 0 ]
done
