#!/bin/bash
# make test-gpu: libvgpu against the real driver (CUDA 13, driver 580,
# PyTorch). Needs a GPU; prints figures and writes them to $OUT/ if set.
set -u
B=$(cd "${1:-build}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
W=$(mktemp -d /tmp/vgpu-gpu.XXXXXX)
RES=${OUT:+$OUT/vgpu-gpu-results.txt}
RES=${RES:-$W/results.txt}
PASS=0; FAIL=0
say() { echo "$*" | tee -a "$RES"; }
check() { local name=$1; shift; if "$@"; then say "ok - $name"; PASS=$((PASS+1)); else say "not ok - $name"; FAIL=$((FAIL+1)); fi; }

if ! ldconfig -p | grep -q 'libcuda.so.1'; then echo "no CUDA driver here: test-gpu needs a GPU machine"; exit 1; fi
nvidia-smi -L | tee -a "$RES"
CC=${CC:-gcc}
LDIR=$(dirname "$(ldconfig -p | awk '/libcuda.so.1/ {print $NF; exit}')")
NDIR=$(dirname "$(ldconfig -p | awk '/libnvidia-ml.so.1/ {print $NF; exit}')")
export LIBRARY_PATH="$LDIR:$NDIR${LIBRARY_PATH:+:$LIBRARY_PATH}"
$CC -DVGPU_REAL_GPU -O2 -std=gnu11 -I"$ROOT/include" -I"$ROOT/tests" -o "$W/vt" "$ROOT/tests/vt.c" \
    -l:libcuda.so.1 -l:libnvidia-ml.so.1 -ldl -pthread -lm || exit 1
$CC -O2 -std=gnu11 -I"$ROOT/include" -o "$W/spin" "$HERE/gpu_spin.c" -l:libcuda.so.1 || exit 1
PRE=$B/libvgpu.so
Q=4g; QM=4096
E=(CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/claim.shr LD_PRELOAD=$PRE)

say "== memory: every allocation API through each path, quota $Q"
for path in linked dlsym procaddr; do
    env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q "$W/vt" apis $path 16 | tee -a "$RES"
done
env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q "$W/vt" meminfo procaddr $QM | tee -a "$RES"
env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q "$W/vt" kill inlock $QM "$W/pause" | tee -a "$RES"
env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q "$W/vt" concurrent 8 4 $QM | grep -v 'physical\|exercised' | tee -a "$RES"
# A graph's memory nodes: the graph memory pool the driver reserves at the
# graph's launch is charged to the claim, and returned after a trim.
env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q "$W/vt" graphmem $QM 1024 | tee -a "$RES"
PASS=$((PASS + $(grep -c '^ok ' "$RES"))); FAIL=$((FAIL + $(grep -c '^not ok ' "$RES")))
# Four claims whose quotas fill what the GPU offers tenants (total minus
# the driver's reserved memory): contexts are inside the quotas, so the last
# claim still gets its context and all of its quota.
cap=$(nvidia-smi --id=0 --query-gpu=memory.total,memory.reserved --format=csv,noheader,nounits | awk -F, '{print $1 - $2}')
q4=$((cap / 4))
say "== memory: 4 claims of $q4 MiB (GPU offers $cap MiB) with their contexts"
mkdir -p "$W/claims"
env LD_PRELOAD=$PRE CUDA_DEVICE_MEMORY_LIMIT=${q4}m "$W/vt" claims 4 $q4 0 "$W/claims" > "$W/claims.out"
tee -a "$RES" < "$W/claims.out"
PASS=$((PASS + $(grep -c '^ok ' "$W/claims.out"))); FAIL=$((FAIL + $(grep -c '^not ok ' "$W/claims.out")))

say "== nvidia-smi under the preload (quota $Q)"
smi=$(env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q nvidia-smi --id=0 --query-gpu=memory.total,memory.used,memory.free --format=csv,noheader,nounits)
say "nvidia-smi: $smi"
check "nvidia-smi shows the quota as total" bash -c "[ \"\$(echo '$smi' | cut -d, -f1 | tr -d ' ')\" = $QM ]"

say "== PyTorch memory"
out=$(env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=$Q python3 "$HERE/torch_tests.py" meminfo $((4 << 30)) 2>&1 | tail -4)
say "$out"
check "torch.cuda.mem_get_info reports the quota and OOM is raised past it" grep -q 'RESULT meminfo PASS' <<<"$out"

say "== PyTorch training step overhead"
base=$(python3 "$HERE/torch_tests.py" train 300 | awk '/RESULT/ {print $3}')
nolim=$(env "${E[@]}" python3 "$HERE/torch_tests.py" train 300 | awk '/RESULT/ {print $3}')
memlim=$(env "${E[@]}" CUDA_DEVICE_MEMORY_LIMIT=16g python3 "$HERE/torch_tests.py" train 300 | awk '/RESULT/ {print $3}')
smlim=$(env "${E[@]}" CUDA_DEVICE_SM_LIMIT=100 CUDA_DEVICE_MEMORY_LIMIT=16g python3 "$HERE/torch_tests.py" train 300 | awk '/RESULT/ {print $3}')
say "ms/step: driver $base | libvgpu no limit $nolim | memory limit $memlim | memory limit + share 100 $smlim"
say "overhead: $(awk -v b="$base" -v n="$nolim" -v m="$memlim" -v s="$smlim" 'BEGIN{printf "no limit %.2f%% | memory limit %.2f%% | memory limit + share 100 %.2f%%", (n/b-1)*100, (m/b-1)*100, (s/b-1)*100}')"

say "== compute shares (completed work on the device)"
solo=$("$W/spin" 5 500 | tee -a "$RES" | sed 's/.*share \([0-9.]*\)%.*/\1/')
say "spin alone without libvgpu: $solo%"
share_of() { sed -n 's/.*GPU share \([0-9.]*\)%.*/\1/p' "$1"; }
claimrun() { # tag share cmd...
    local tag=$1 share=$2; shift 2
    env CUDA_DEVICE_MEMORY_SHARED_CACHE=$W/c$tag.shr LD_PRELOAD=$PRE CUDA_DEVICE_SM_LIMIT=$share "$@"
}
within() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 5) }'; }
claimrun a 30 "$W/spin" 12 500 > "$W/a30"; s=$(share_of "$W/a30"); say "30% alone: $s%"; check "30% alone within 5 pp" within "$s" 30
claimrun a 30 "$W/spin" 12 500 graph > "$W/g30"; s=$(share_of "$W/g30"); say "30% alone, graph launches: $s%"; check "graph launches throttled to 30%" within "$s" 30
for pair in "30 70" "10 90"; do
    set -- $pair
    claimrun a $1 "$W/spin" 12 200 > "$W/pa" & claimrun b $2 "$W/spin" 12 1000 > "$W/pb"; wait
    sa=$(share_of "$W/pa"); sb=$(share_of "$W/pb")
    say "spin $1% + spin $2%: $sa% / $sb%"
    check "spin/spin $1/$2 within 5 pp" bash -c "$(declare -f within); within $sa $1 && within $sb $2"
done
rate=$(python3 "$HERE/torch_tests.py" work 6 | awk '/RESULT/ {print $3}')
say "torch matmul alone: $rate/s"
for pair in "30 70" "10 90"; do
    set -- $pair
    claimrun a $1 "$W/spin" 12 500 > "$W/pa" & claimrun b $2 python3 "$HERE/torch_tests.py" work 12 "$rate" > "$W/pb"; wait
    sa=$(share_of "$W/pa"); sb=$(sed -n 's/.*share \([0-9.]*\)%.*/\1/p' "$W/pb")
    say "spin $1% + PyTorch $2%: $sa% / $sb%"
    check "spin/torch $1/$2 within 5 pp" bash -c "$(declare -f within); within $sa $1 && within $sb $2"
done

say "== compute: busy, idle, busy under a share (the pause is not charged)"
for sp in "10 1" "30 3" "70 10"; do
    set -- $sp
    out=$(claimrun a $1 "$W/spin" 0 500 pause 3 $2 | tee -a "$RES")
    s=$(sed -n 's/.*GPU share \([0-9.]*\)%.*/\1/p' <<<"$out"); wms=$(sed -n 's/.*launch waited \([0-9.]*\) ms.*/\1/p' <<<"$out")
    check "share $1% resumes at once after $2 s idle (first launch ${wms} ms, then $s%)" \
        awk -v s="$s" -v w="$wms" -v t=$1 'BEGIN { exit !(w < 100 && s >= 0.9 * t && s <= 1.1 * t + 2) }'
done

say "== compute: torch.cuda.graph capture (global mode) while another thread launches, at 30%"
grate=$(python3 "$HERE/torch_tests.py" work 6 | awk '/RESULT/ {print $3}')
out=$(claimrun a 30 python3 "$HERE/torch_tests.py" graph 10 "$grate" 2>&1 | tail -3)
say "$out"
check "capture succeeds beside a launching thread under a limit" grep -q 'RESULT graph_capture PASS' <<<"$out"
gs=$(sed -n 's/.*share \([0-9.]*\)%.*/\1/p' <<<"$out")
check "graph replays throttled to 30% (${gs}%)" within "${gs:-0}" 30

say "== compute: CuPy stream and context churn at 30%"
out=$(claimrun a 30 python3 "$HERE/torch_tests.py" churn 10 2>&1 | tail -3)
say "$out"
check "stream and context churn under a limit completes" grep -q 'RESULT churn PASS' <<<"$out"

say "== compute: launch overhead of empty kernels, without libvgpu and at a 50% share"
o0=$("$W/spin" 3 0 overhead | sed -n 's/.* \([0-9]*\) ns per launch.*/\1/p')
o50=$(claimrun a 50 "$W/spin" 3 0 overhead | sed -n 's/.* \([0-9]*\) ns per launch.*/\1/p')
say "ns per empty launch: driver $o0, libvgpu at a 50% share $o50 (added $((o50 - o0)) ns)"

say ""
say "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
