/* The stream-ordered allocator (cuMemAllocAsync, memory pools). A pool takes
 * device memory in chunks and keeps what is freed into it reserved until it
 * is trimmed (cuMemPoolTrimTo) or a synchronisation finds it above its
 * release threshold; a cuMemFreeAsync only returns memory to the pool, and
 * only when the stream reaches it. So the claim is charged what each pool
 * really holds, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, re-read after every
 * pool allocation and trim, whenever the claim's free memory is reported,
 * and before an allocation would be refused (after trimming this
 * process's pools to what is in use). An allocation reserves up
 * front only what the pool may need to grow by (the request minus the
 * pool's unused reserve). */
#include "dispatch.h"
#include "devices.h"
#include "log.h"
#include "memacct.h"
#include <pthread.h>
#include <string.h>

#define MAX_POOLS 256
static struct pool {
    CUmemoryPool pool;
    struct vgpu_dev *dev;   /* limited device the pool's memory is on */
    uint64_t charged;       /* bytes charged for it */
} pools[MAX_POOLS];
static int npools;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int mem_on(void) { vgpu_ensure_init(); return vgpu_cfg.mem_any; }
static struct vgpu_dev *limited(struct vgpu_dev *d) { return d && d->mem_limit ? d : NULL; }

static int attr(CUmemoryPool p, CUmemPool_attribute a, uint64_t *v)
{
    cuuint64_t x = 0;
    if (REAL(cuMemPoolGetAttribute)(p, a, &x) != CUDA_SUCCESS) return -1;
    *v = x;
    return 0;
}

/* Under mu. */
static struct pool *find(CUmemoryPool p)
{
    for (int i = 0; i < npools; i++)
        if (pools[i].pool == p) return &pools[i];
    return NULL;
}

/* Under mu: the entry for p on device d (created, uncharged, if new). */
static struct pool *entry(CUmemoryPool p, struct vgpu_dev *d)
{
    struct pool *e = find(p);
    if (e || npools == MAX_POOLS) return e;
    e = &pools[npools++];
    *e = (struct pool){p, d, 0};
    return e;
}

/* Under mu: charge what the pool holds now; bytes given back. */
static uint64_t sync_one(struct pool *e)
{
    uint64_t reserved;
    if (attr(e->pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != 0) return 0;
    uint64_t back = 0;
    if (reserved > e->charged) vgpu_mem_charge(e->dev, reserved - e->charged);
    else if (reserved < e->charged) vgpu_mem_unreserve(e->dev, back = e->charged - reserved);
    e->charged = reserved;
    return back;
}

/* Under mu, after an allocation from e's pool with `need` bytes reserved
 * up front: the reservation becomes what the pool holds now (more if the
 * pool grew by more than asked, as its chunk size may make it). */
static void settle(struct pool *e, uint64_t need)
{
    uint64_t reserved;
    if (attr(e->pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != 0) reserved = e->charged;
    uint64_t grew = reserved > e->charged ? reserved - e->charged : 0;
    uint64_t shrank = reserved < e->charged ? e->charged - reserved : 0;
    if (grew > need) vgpu_mem_charge(e->dev, grew - need);
    else if (need - grew + shrank) vgpu_mem_unreserve(e->dev, need - grew + shrank);
    e->charged = reserved;
}

uint64_t vgpu_pools_sync(int trim)
{
    if (!__atomic_load_n(&npools, __ATOMIC_ACQUIRE)) return 0;
    if (pthread_mutex_trylock(&mu) != 0) return 0; /* a pool call in progress will sync */
    uint64_t back = 0;
    for (int i = 0; i < npools; i++) {
        uint64_t used;
        /* Trimming to what is in use releases only memory the allocator can
         * safely give back (a synchronisation with the default release
         * threshold does the same). */
        if (trim && attr(pools[i].pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) == 0)
            REAL(cuMemPoolTrimTo)(pools[i].pool, used);
        back += sync_one(&pools[i]);
    }
    pthread_mutex_unlock(&mu);
    return back;
}

/* The device whose memory a pool holds: recorded at cuMemPoolCreate, or one
 * of the devices' default or current pools; else the current device. */
static struct vgpu_dev *pool_device(CUmemoryPool p)
{
    pthread_mutex_lock(&mu);
    struct pool *e = find(p);
    struct vgpu_dev *d = e ? e->dev : NULL;
    pthread_mutex_unlock(&mu);
    if (e) return d;
    for (int i = 0, n = vgpu_dev_count(); i < n; i++) {
        CUmemoryPool q = NULL, c = NULL;
        if ((REAL(cuDeviceGetDefaultMemPool)(&q, i) == CUDA_SUCCESS && q == p) ||
            (REAL(cuDeviceGetMemPool)(&c, i) == CUDA_SUCCESS && c == p))
            return vgpu_dev_by_ordinal(i);
    }
    return vgpu_dev_current();
}

/* Allocate n bytes from pool p of limited device d through `call`. */
#define POOL_ALLOC(p, d, n, call)                                                  \
    do {                                                                           \
        pthread_mutex_lock(&mu);                                                   \
        struct pool *e_ = entry((p), (d));                                         \
        uint64_t used_ = 0, need_ = (n);                                           \
        if (e_) {                                                                  \
            sync_one(e_);                                                          \
            if (attr((p), CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used_) == 0 && used_ <= e_->charged) \
                need_ = e_->charged - used_ >= (n) ? 0 : (n) - (e_->charged - used_); \
        }                                                                          \
        if (need_ && vgpu_mem_reserve((d), need_) != 0) {                          \
            pthread_mutex_unlock(&mu);                                             \
            return CUDA_ERROR_OUT_OF_MEMORY;                                       \
        }                                                                          \
        vgpu_procmem_hold(); /* a pool may grow by more than need_ */              \
        CUresult r_ = call;                                                        \
        if (e_) settle(e_, need_);                                                 \
        else if (need_) vgpu_mem_unreserve((d), need_);                            \
        vgpu_procmem_release();                                                    \
        pthread_mutex_unlock(&mu);                                                 \
        return r_;                                                                 \
    } while (0)

static CUmemoryPool current_pool(struct vgpu_dev *d)
{
    CUmemoryPool p = NULL;
    if (d->ordinal < 0 || REAL(cuDeviceGetMemPool)(&p, d->ordinal) != CUDA_SUCCESS) return NULL;
    return p;
}

/* Without pools in the driver: charge the allocation itself, as before. */
static CUresult plain(struct vgpu_dev *d, size_t n, CUresult (*fn)(CUdeviceptr *, size_t, CUstream),
                      CUdeviceptr *ptr, CUstream s)
{
    if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    if (vgpu_mem_reserve(d, n) != 0) { vgpu_mem_unbook(); return CUDA_ERROR_OUT_OF_MEMORY; }
    CUresult r = fn(ptr, n, s);
    if (r == CUDA_SUCCESS) vgpu_mem_track(VGPU_KIND_PTR, *ptr, d, n);
    else { vgpu_mem_unbook(); vgpu_mem_unreserve(d, n); }
    return r;
}

static CUresult alloc_async(CUdeviceptr *ptr, size_t n, CUstream s, CUresult (*fn)(CUdeviceptr *, size_t, CUstream))
{
    struct vgpu_dev *d = mem_on() ? limited(vgpu_dev_current()) : NULL;
    if (!d) return fn(ptr, n, s);
    CUmemoryPool p = current_pool(d);
    if (!p) return plain(d, n, fn, ptr, s);
    POOL_ALLOC(p, d, n, fn(ptr, n, s));
}

VGPU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s)
{
    return alloc_async(p, n, s, REAL(cuMemAllocAsync));
}
VGPU_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s)
{
    return alloc_async(p, n, s, REAL(cuMemAllocAsync_ptsz));
}

static CUresult alloc_from(CUdeviceptr *ptr, size_t n, CUmemoryPool p, CUstream s,
                           CUresult (*fn)(CUdeviceptr *, size_t, CUmemoryPool, CUstream))
{
    struct vgpu_dev *d = mem_on() ? limited(pool_device(p)) : NULL; /* the pool's device, not the context's */
    if (!d) return fn(ptr, n, p, s);
    POOL_ALLOC(p, d, n, fn(ptr, n, p, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *ptr, size_t n, CUmemoryPool p, CUstream s)
{
    return alloc_from(ptr, n, p, s, REAL(cuMemAllocFromPoolAsync));
}
VGPU_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *ptr, size_t n, CUmemoryPool p, CUstream s)
{
    return alloc_from(ptr, n, p, s, REAL(cuMemAllocFromPoolAsync_ptsz));
}

/* cuMemAlloc'd memory freed with cuMemFreeAsync (CUDA allows it): the
 * driver frees it when the stream reaches the free, so its charge stays
 * until an event recorded right after the free has completed. Polled
 * before an allocation is refused and when free memory is reported. */
#define MAX_DEFERRED 1024
static struct deferred {
    CUevent ev;
    struct vgpu_dev *dev;
    uint64_t bytes;
} deferred[MAX_DEFERRED];
static int ndeferred;

static void defer_unreserve(struct vgpu_dev *d, uint64_t b, CUstream s)
{
    int capturing = 0, kept = 0;
    /* during a capture the free becomes a graph node, and an event record
     * would too: give the charge back now, as before */
    if (REAL(cuStreamIsCapturing)(s, &capturing) == CUDA_SUCCESS && !capturing) {
        pthread_mutex_lock(&mu);
        CUevent ev = NULL;
        if (ndeferred < MAX_DEFERRED && REAL(cuEventCreate)(&ev, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS) {
            if (REAL(cuEventRecord)(ev, s) == CUDA_SUCCESS) {
                deferred[ndeferred] = (struct deferred){ev, d, b};
                __atomic_store_n(&ndeferred, ndeferred + 1, __ATOMIC_RELEASE);
                kept = 1;
            } else {
                REAL(cuEventDestroy_v2)(ev);
            }
        }
        pthread_mutex_unlock(&mu);
    }
    if (!kept) vgpu_mem_unreserve(d, b); /* cannot tell when it runs: now */
}

uint64_t vgpu_deferred_frees_poll(void)
{
    if (!__atomic_load_n(&ndeferred, __ATOMIC_ACQUIRE)) return 0;
    if (pthread_mutex_trylock(&mu) != 0) return 0;
    /* an event query is a potentially unsafe call: in the relaxed capture
     * mode it neither fails nor invalidates another thread's capture */
    int mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    int exchanged = REAL(cuThreadExchangeStreamCaptureMode)(&mode) == CUDA_SUCCESS;
    uint64_t back = 0;
    for (int i = 0; i < ndeferred;) {
        CUresult r = REAL(cuEventQuery)(deferred[i].ev);
        if (r == CUDA_ERROR_NOT_READY) { i++; continue; }
        /* done, or the event is gone with its context (and the memory with it) */
        vgpu_mem_unreserve(deferred[i].dev, deferred[i].bytes);
        back += deferred[i].bytes;
        REAL(cuEventDestroy_v2)(deferred[i].ev);
        deferred[i] = deferred[--ndeferred];
    }
    if (exchanged) REAL(cuThreadExchangeStreamCaptureMode)(&mode);
    pthread_mutex_unlock(&mu);
    return back;
}

/* A stream-ordered free of pool memory only returns it to its pool (the
 * pool's reserve stays charged); one of a cuMemAlloc'd pointer gives the
 * quota back when the stream has run it. */
static CUresult free_async(CUdeviceptr p, CUstream s, CUresult (*fn)(CUdeviceptr, CUstream))
{
    if (!mem_on()) return fn(p, s);
    struct vgpu_dev *d = NULL;
    uint64_t b = 0;
    int had = vgpu_mem_take(VGPU_KIND_PTR, p, &d, &b);
    CUresult r = fn(p, s);
    if (had && r == CUDA_SUCCESS) defer_unreserve(d, b, s);
    else if (had) vgpu_mem_retrack(VGPU_KIND_PTR, p, d, b);
    return r;
}
VGPU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { return free_async(p, s, REAL(cuMemFreeAsync)); }
VGPU_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return free_async(p, s, REAL(cuMemFreeAsync_ptsz)); }

VGPU_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *p, const CUmemPoolProps *props)
{
    CUresult r = REAL(cuMemPoolCreate)(p, props);
    struct vgpu_dev *d;
    if (r == CUDA_SUCCESS && mem_on() && props && props->location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
        (d = limited(vgpu_dev_by_ordinal(props->location.id)))) {
        pthread_mutex_lock(&mu);
        if (!entry(*p, d)) LOG_WARN("more than %d memory pools: pool %p is not accounted", MAX_POOLS, (void *)*p);
        pthread_mutex_unlock(&mu);
    }
    return r;
}

/* A pool destroyed with allocations outstanding keeps its memory until they
 * are freed; the driver cannot be asked about it then, so its charge stays
 * (until the process exits). */
VGPU_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool p)
{
    if (!mem_on()) return REAL(cuMemPoolDestroy)(p);
    pthread_mutex_lock(&mu);
    struct pool *e = find(p);
    uint64_t used = 1;
    if (e && attr(p, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) != 0) used = 1;
    CUresult r = REAL(cuMemPoolDestroy)(p);
    if (r == CUDA_SUCCESS && e) {
        if (used == 0 && e->charged) vgpu_mem_unreserve(e->dev, e->charged);
        else if (used) LOG_INFO("memory pool %p destroyed with allocations outstanding: its charge stays", (void *)p);
        *e = pools[--npools];
    }
    pthread_mutex_unlock(&mu);
    return r;
}

VGPU_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep)
{
    CUresult r = REAL(cuMemPoolTrimTo)(p, keep);
    if (r == CUDA_SUCCESS && mem_on()) {
        pthread_mutex_lock(&mu);
        struct pool *e = find(p);
        if (e) sync_one(e);
        pthread_mutex_unlock(&mu);
    }
    return r;
}

void vgpu_pools_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    mu = fresh;
    npools = 0; /* the parent's pools are not the child's */
    ndeferred = 0; /* nor its events and pending frees (charged to the parent) */
}
