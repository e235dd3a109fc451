# Compute-limiter accuracy tests (sourced by run_tests.sh). Each scenario runs
# on its own simulated GPU (own state file), so independent scenarios run in
# parallel; the fake GPU's trace of completed kernels is what is measured.
LT=$B/tests/limtest
U0=GPU-fa4e0000-0000-0000-0000-000000000000
mkdir -p "$W/gpus"
printf 'version=1\nreserved=30\n' > "$W/gpus/$U0"

# claim NAME STATE TAG SECONDS KERNEL_US PATH [IDLE_S] -- VAR=VALUE...
claim() {
    local st=$1 tag=$2 secs=$3 kus=$4 path=$5 idle=$6; shift 6
    [ "$1" = "--" ] && shift
    env -u CUDA_DEVICE_SM_LIMIT -u CUDA_DEVICE_MEMORY_LIMIT LD_LIBRARY_PATH="$B/fake" FAKE_GPU_STATE="$W/$st" \
        CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/$st.claim$tag" LD_PRELOAD="$PRE" FAKE_WORK_TAG=$tag "$@" \
        $LT run "$secs" "$kus" "$path" "$idle" >/dev/null 2>>"$W/lim.stderr"
}
lim_report() { # STATE NAME tag:share[:mode]...
    local st=$1 name=$2; shift 2
    local out
    out=$(LD_LIBRARY_PATH="$B/fake" $LT analyze "$W/$st" "$@")
    echo "== compute: $name"
    sed 's/^/   /' <<<"$out"
    PASS=$((PASS + $(grep -c '^ok ' <<<"$out"))); FAIL=$((FAIL + $(grep -c '^not ok ' <<<"$out")))
}
rm -f "$W"/L*

S=12.5
# batch 1: single claims and launch paths
claim L1 1 $S 500 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 &
claim L5 1 10 500 linked 3 -- CUDA_DEVICE_SM_LIMIT=30 &
claim L6 1 $S 300 graph 0 -- CUDA_DEVICE_SM_LIMIT=30 &
claim L7 1 $S 300 procaddr 0 -- CUDA_DEVICE_SM_LIMIT=40 &
claim L8 1 $S 300 ex 0 -- CUDA_DEVICE_SM_LIMIT=20 &
claim L9 1 $S 800 linked 0 -- FAKE_GPU_COUNT=2 LIMTEST_DEVICE=1 CUDA_DEVICE_SM_LIMIT_0=70 CUDA_DEVICE_SM_LIMIT_1=25 &
wait
lim_report L1 "one claim capped at 30%, alone, saturating" 1:30
lim_report L5 "idle 3 s, then a saturating burst at 30%" 1:30:burst
lim_report L6 "graph launches (cuGraphLaunch) at 30%" 1:30
lim_report L7 "launches fetched by cuGetProcAddress (ptsz) at 40%" 1:40
lim_report L8 "cuLaunchKernelEx at 20%" 1:20
lim_report L9 "second GPU of a two-GPU claim at its own 25%" 1:25

# batch 2: claims side by side on one GPU (different kernel lengths on purpose)
claim L2 1 $S 200 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 & claim L2 2 $S 1000 linked 0 -- CUDA_DEVICE_SM_LIMIT=70 &
claim L3 1 $S 500 linked 0 -- CUDA_DEVICE_SM_LIMIT=10 & claim L3 2 $S 300 linked 0 -- CUDA_DEVICE_SM_LIMIT=90 &
# a framework-like claim: 100 us of host work between launches, beside a saturating one
claim L11 1 $S 200 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 LIMTEST_GAP_US=100 & claim L11 2 $S 1000 linked 0 -- CUDA_DEVICE_SM_LIMIT=70 &
wait
# batch 3 (kept small: 2 cores, and these are timing tests)
claim L4 1 $S 400 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 &
claim L4 2 $S 400 linked 0 -- CUDA_DEVICE_SM_LIMIT=0 VGPU_COMPUTE_POLICY=besteffort VGPU_GPU_STATE_DIR=$W/gpus &
# a capped claim beside a neighbour without any limit (no libvgpu at all)
claim L10 1 $S 500 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 & claim L10 2 $S 500 linked 0 -- LD_PRELOAD= &
wait
lim_report L2 "two claims 30% and 70%" 1:30 2:70
lim_report L3 "two claims 10% and 90%" 1:10 2:90
lim_report L11 "sparse launches (100 us host time between them) 30% beside a saturating 70%" 1:30 2:70
lim_report L4 "capped 30% beside a best-effort claim (reserved=30, may use 70%)" 1:30 2:70
lim_report L10 "capped 30% beside an unlimited process" 1:30:atleast

# batch 4: one claim, several processes and threads drawing on one budget
claim L12 1 $S 400 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 & claim L12 1 $S 700 linked 0 -- CUDA_DEVICE_SM_LIMIT=30 &
claim L13 1 $S 300 linked 0 -- CUDA_DEVICE_SM_LIMIT=40 LIMTEST_THREADS=3 &
wait
lim_report L12 "two processes of one 30% claim (shared region): 30% together" 1:30
lim_report L13 "three launching threads of one 40% claim" 1:40
