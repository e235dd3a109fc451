/* Device memory the driver takes for this process that no hook sees being
 * taken: kernels loaded lazily (CUDA_MODULE_LOADING=LAZY, the default since
 * CUDA 12.2: at cuModuleGetFunction or at a kernel's first launch), the
 * graph memory pool behind graph memory nodes (reserved at a graph's
 * launch, kept until cuDeviceGraphMemTrim), libraries' code in contexts
 * other than the one current at their load, driver-internal buffers.
 *
 * Method: NVML reports the device memory each process holds, by host PID
 * (nvproc.c finds this process's). What NVML reports for this process,
 * less what the hooks charged it (its slot in the region), is charged to
 * the claim as well, and the charge follows NVML up and down. It is
 * re-read at most every SYNC_NS on the memory paths (allocations, frees
 * that make room, free-memory queries), and at the next of them after an
 * event that takes such memory (a kernel fetched, a graph's first launch,
 * a trim, an unload). Before an allocation is refused it is re-read at once.
 *
 * Races: hooks charge allocations before the driver makes them and give
 * them back after the driver frees them, so a reading between the two
 * under-states what is hidden, never over-states it. The calls that charge
 * after the driver has taken memory (contexts, module loads, pool growth)
 * run inside vgpu_procmem_hold(); a reading that overlaps one is dropped.
 *
 * The same reading corrects the other measurement's error: a context's or
 * module's charge is the drop in the device's free memory across its
 * creation, which includes what other processes allocated meanwhile. Where
 * NVML says this process holds less than the hooks charged, the difference
 * is given back, up to what those measured driver charges total (never
 * below what the process's allocations account for).
 *
 * Error: memory NVML does not attribute to this process is not seen; a
 * difference under SLACK_BYTES is not charged; between readings the charge
 * can be up to SYNC_NS old. */
#define _GNU_SOURCE
#include "memacct.h"
#include "log.h"
#include "nvproc.h"
#include <pthread.h>
#include <string.h>
#include <time.h>

#define MAX_ORD 64
#define SYNC_NS 100000000ull      /* at most every 100 ms, unless something took memory */
#define SLACK_BYTES (2ull << 20)  /* NVML's page granularity */

/* charged: what this file added to the process's slot (negative: a credit,
 * taken back from the driver charges measured around creations and loads,
 * at most all of them: drv). */
static struct { int64_t charged; uint64_t drv, next; int dirty; } st[MAX_ORD];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int holds;       /* driver calls in flight that charge after the fact */
static unsigned gen;    /* bumped at every hold and release */

/* The coarse clock (a few ms resolution, no counter read) is plenty for a
 * 100 ms interval, and keeps the memory paths' added cost to a few ns. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void vgpu_procmem_hold(void)
{
    __atomic_add_fetch(&holds, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&gen, 1, __ATOMIC_SEQ_CST);
}

void vgpu_procmem_release(void)
{
    __atomic_add_fetch(&gen, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&holds, 1, __ATOMIC_SEQ_CST);
}

void vgpu_procmem_dirty(struct vgpu_dev *d)
{
    if (d && d->mem_limit && d->ordinal >= 0 && d->ordinal < MAX_ORD)
        __atomic_store_n(&st[d->ordinal].dirty, 1, __ATOMIC_RELEASE);
}

/* Graph executables launched so far (a set of handles; when it fills up it
 * starts again, which only costs an early reading). */
#define SEEN 1024
static uintptr_t seen[SEEN];
static unsigned nseen;
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

void vgpu_procmem_graph_launched(CUgraphExec g)
{
    uintptr_t k = (uintptr_t)g;
    if (!k) return;
    pthread_mutex_lock(&seen_mu);
    unsigned i = (unsigned)((k >> 4) * 2654435761u) % SEEN;
    while (seen[i] && seen[i] != k) i = (i + 1) % SEEN;
    int first = !seen[i];
    if (first) {
        if (nseen + 1 >= SEEN * 3 / 4) { memset(seen, 0, sizeof seen); nseen = 0; i = (unsigned)((k >> 4) * 2654435761u) % SEEN; }
        seen[i] = k;
        nseen++;
    }
    pthread_mutex_unlock(&seen_mu);
    if (first) vgpu_procmem_dirty(vgpu_dev_current());
}

uint64_t vgpu_procmem_sync(struct vgpu_dev *d, int force)
{
    if (!d || !d->mem_limit || d->ordinal < 0 || d->ordinal >= MAX_ORD) return 0;
    int o = d->ordinal;
    uint64_t now = now_ns();
    if (!force && !__atomic_load_n(&st[o].dirty, __ATOMIC_ACQUIRE) && now < __atomic_load_n(&st[o].next, __ATOMIC_RELAXED))
        return 0;
    if (pthread_mutex_trylock(&mu) != 0) return 0; /* another thread is reading */
    uint64_t back = 0;
    nvmlDevice_t h;
    unsigned pid;
    /* a driver call that charges after the fact is in flight: its memory
     * would be counted twice (tried again at the next call) */
    if (__atomic_load_n(&holds, __ATOMIC_SEQ_CST)) goto out;
    /* finding the PID allocates a probe on d: only from a context on d */
    if (!vgpu_nvproc_known(d) && vgpu_dev_current() != d) goto out;
    int found = vgpu_nvproc_find(d, &h, &pid);
    if (found == VGPU_NVPROC_LATER) goto out; /* no room for the probe now: asked again later */
    if (found != VGPU_NVPROC_OK) {
        __atomic_store_n(&st[o].next, ~0ull, __ATOMIC_RELAXED); /* never: NVML cannot tell */
        __atomic_store_n(&st[o].dirty, 0, __ATOMIC_RELAXED);
        goto out;
    }
    unsigned g0 = __atomic_load_n(&gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&holds, __ATOMIC_SEQ_CST)) goto out;
    uint64_t nv = 0;
    if (vgpu_nvproc_mem(h, pid, &nv) != 0) goto out;
    uint64_t mine = vgpu_mem_mine(d);
    if (__atomic_load_n(&holds, __ATOMIC_SEQ_CST) || __atomic_load_n(&gen, __ATOMIC_SEQ_CST) != g0) goto out;
    __atomic_store_n(&st[o].dirty, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&st[o].next, now + SYNC_NS, __ATOMIC_RELAXED);
    int64_t hooks = (int64_t)mine - st[o].charged;           /* what the hooks charged */
    int64_t want = (int64_t)nv - hooks, floor = -(int64_t)st[o].drv;
    if (want < floor) want = floor;
    if (want >= st[o].charged + (int64_t)SLACK_BYTES) {
        LOG_INFO("%s: NVML says the driver holds %lld MiB for this process beyond its charges (NVML: %llu MiB): "
                 "charged to the claim", d->uuid, (long long)(want >> 20), (unsigned long long)(nv >> 20));
        vgpu_mem_charge(d, (uint64_t)(want - st[o].charged));
        st[o].charged = want;
    } else if (want + (int64_t)SLACK_BYTES <= st[o].charged) {
        back = (uint64_t)(st[o].charged - want);
        if (want < 0)
            LOG_INFO("%s: NVML says this process holds %lld MiB less than its measured contexts and modules were "
                     "charged: given back", d->uuid, (long long)(-want >> 20));
        vgpu_mem_unreserve(d, back);
        st[o].charged = want;
    }
out:
    pthread_mutex_unlock(&mu);
    return back;
}

void vgpu_procmem_driver_charged(struct vgpu_dev *d, uint64_t bytes)
{
    if (!d || d->ordinal < 0 || d->ordinal >= MAX_ORD || !bytes) return;
    pthread_mutex_lock(&mu);
    st[d->ordinal].drv += bytes;
    pthread_mutex_unlock(&mu);
}

uint64_t vgpu_procmem_driver_released(struct vgpu_dev *d, uint64_t bytes)
{
    if (!d || d->ordinal < 0 || d->ordinal >= MAX_ORD) return bytes;
    int o = d->ordinal;
    pthread_mutex_lock(&mu);
    st[o].drv = st[o].drv > bytes ? st[o].drv - bytes : 0;
    /* a credit against these bytes was given back already: that part is gone */
    uint64_t credit = st[o].charged < 0 ? (uint64_t)-st[o].charged : 0;
    if (credit > bytes) credit = bytes;
    st[o].charged += (int64_t)credit;
    pthread_mutex_unlock(&mu);
    return bytes - credit;
}

void vgpu_procmem_atfork_child(void)
{
    /* the child holds none of the parent's driver memory, and its slot is new */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    mu = fresh;
    memset(st, 0, sizeof st);
    holds = 0;
    seen_mu = fresh;
}
