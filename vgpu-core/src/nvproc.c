/* Finding this process's host PID in NVML without guessing from timing
 * (HAMi's slow, racy PID diffing): allocate a probe buffer of a size chosen
 * for this process and find the processes whose NVML memory rose by that
 * size and fell back by it when it was freed; two probes of different sizes
 * must single out one process. A few NVML and allocation calls, once per
 * process and device. */
#define _GNU_SOURCE
#include "nvproc.h"
#include "dispatch.h"
#include "log.h"
#include "memacct.h"
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_ORD 64
#define MAX_PROCS 256
#define PROBE_MAX (11ull << 21)   /* the largest probe below: (2 + 5 + 4) x 2 MiB */
#define RETRY_NS 1000000000ull    /* a probe the quota had no room for: again after this */
static struct { int state; nvmlDevice_t h; unsigned pid; uint64_t retry_at; } known[MAX_ORD]; /* state: 0 untried, else a VGPU_NVPROC_ value + 1 */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int list(nvmlDevice_t h, nvmlProcessInfo_t *p, unsigned *n)
{
    unsigned cap = *n;
    if (REAL(nvmlDeviceGetComputeRunningProcesses_v3)(h, n, p) != NVML_SUCCESS) return -1;
    if (*n > cap) *n = cap;
    return 0;
}

static unsigned long long mem_of(const nvmlProcessInfo_t *p, unsigned n, unsigned pid)
{
    for (unsigned i = 0; i < n; i++)
        if (p[i].pid == pid) return p[i].usedGpuMemory;
    return 0;
}

static unsigned probe(nvmlDevice_t h)
{
    nvmlProcessInfo_t a[MAX_PROCS], b[MAX_PROCS], c[MAX_PROCS];
    unsigned cand[MAX_PROCS], next[MAX_PROCS], nc = 0;
    unsigned self = (unsigned)getpid();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    for (int round = 0; round < 2; round++) {
        /* 2 MiB pages; sizes differ per process and per round */
        size_t size = ((size_t)(2 + round * 5 + (self + (unsigned)ts.tv_nsec) % 5)) << 21;
        unsigned na = MAX_PROCS, nb = MAX_PROCS, ncc = MAX_PROCS;
        CUdeviceptr p = 0;
        if (list(h, a, &na)) return 0;
        for (unsigned i = 0; i < na; i++)
            if (a[i].pid == self && round == 0) return self; /* same PID namespace as the driver */
        if (REAL(cuMemAlloc_v2)(&p, size) != CUDA_SUCCESS) return 0;
        int okb = list(h, b, &nb);
        REAL(cuMemFree_v2)(p);
        if (okb || list(h, c, &ncc)) return 0;
        unsigned nn = 0;
        for (unsigned i = 0; i < nb; i++) {
            unsigned long long before = mem_of(a, na, b[i].pid), after = b[i].usedGpuMemory,
                               back = mem_of(c, ncc, b[i].pid);
            int moved = after >= before + size && after < before + size + (2u << 20) && back + size <= after &&
                        back + size + (2u << 20) > after;
            if (!moved) continue;
            int keep = round == 0;
            for (unsigned k = 0; k < nc && !keep; k++) keep = cand[k] == b[i].pid;
            if (keep) next[nn++] = b[i].pid;
        }
        memcpy(cand, next, nn * sizeof *cand);
        nc = nn;
        if (!nc) return 0;
    }
    return nc == 1 ? cand[0] : 0;
}

int vgpu_nvproc_find(struct vgpu_dev *d, nvmlDevice_t *h, unsigned *hostpid)
{
    if (!d || d->ordinal < 0 || d->ordinal >= MAX_ORD) return VGPU_NVPROC_UNKNOWN;
    int o = d->ordinal;
    pthread_mutex_lock(&mu);
    if (!known[o].state) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        /* the probes are memory like any other: within the quota, or not now */
        if (now < known[o].retry_at || (d->mem_limit && vgpu_mem_reserve_nosync(d, PROBE_MAX) != 0)) {
            if (now >= known[o].retry_at) known[o].retry_at = now + RETRY_NS;
            pthread_mutex_unlock(&mu);
            return VGPU_NVPROC_LATER;
        }
        int st = VGPU_NVPROC_NO_NVML;
        if (REAL(nvmlInit_v2)() == NVML_SUCCESS &&
            REAL(nvmlDeviceGetHandleByUUID)(d->uuid, &known[o].h) == NVML_SUCCESS) {
            known[o].pid = probe(known[o].h);
            st = known[o].pid ? VGPU_NVPROC_OK : VGPU_NVPROC_UNKNOWN;
            if (st == VGPU_NVPROC_OK) LOG_INFO("%s: NVML names this process %u", d->uuid, known[o].pid);
            else LOG_WARN("%s: this process is not identifiable in NVML's process list", d->uuid);
        }
        if (d->mem_limit) vgpu_mem_unreserve(d, PROBE_MAX);
        __atomic_store_n(&known[o].state, st + 1, __ATOMIC_RELEASE);
    }
    int st = known[o].state - 1;
    *h = known[o].h;
    *hostpid = known[o].pid;
    pthread_mutex_unlock(&mu);
    return st;
}

int vgpu_nvproc_known(struct vgpu_dev *d)
{
    return d && d->ordinal >= 0 && d->ordinal < MAX_ORD &&
           __atomic_load_n(&known[d->ordinal].state, __ATOMIC_ACQUIRE) == VGPU_NVPROC_OK + 1;
}

int vgpu_nvproc_mem(nvmlDevice_t h, unsigned hostpid, uint64_t *bytes)
{
    nvmlProcessInfo_t p[MAX_PROCS];
    unsigned n = MAX_PROCS;
    if (list(h, p, &n)) return -1;
    for (unsigned i = 0; i < n; i++)
        if (p[i].pid == hostpid) {
            /* NVML_VALUE_NOT_AVAILABLE (all ones): the driver does not say */
            if (p[i].usedGpuMemory == ~0ull) return -1;
            *bytes = p[i].usedGpuMemory;
            return 0;
        }
    *bytes = 0;
    return 0;
}

/* The child is another process: another host PID, found again if needed. */
void vgpu_nvproc_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    mu = fresh;
    memset(known, 0, sizeof known);
}
