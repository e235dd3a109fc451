/* The fake driver's device memory, following the CUDA driver API's
 * documented rules closely enough that accounting mistakes show up:
 *  - every allocation takes physical memory of the simulated GPU
 *    (fake_gpu.c), shared by all processes, and fails with
 *    CUDA_ERROR_OUT_OF_MEMORY when it is exhausted;
 *  - contexts and module loads take memory too (FAKE_CTX_MEM, FAKE_MODULE_MEM
 *    bytes, default 0), as the real driver's do, and creating a context
 *    takes FAKE_CTX_CREATE_MS (default 0); under lazy loading
 *    (CUDA_MODULE_LOADING=LAZY, the real default since CUDA 12.2) each
 *    kernel also takes FAKE_KERNEL_MEM at its first cuModuleGetFunction,
 *    as the CUDA programming guide's "Lazy Loading" describes for driver
 *    API users (the runtime loads at first launch: same memory, later);
 *  - a stream-ordered allocation made while its stream is being captured
 *    is a graph memory node: it takes nothing then; the device's graph
 *    memory pool reserves the graph's memory at its launch and keeps it
 *    until cuDeviceGraphMemTrim (modelled as called after the graphs have
 *    run: it releases the whole reserve);
 *  - stream-ordered frees take effect when the stream reaches them, and the
 *    memory then goes back to its pool, which keeps it reserved until it is
 *    trimmed (cuMemPoolTrimTo) or a synchronisation finds the pool above its
 *    release threshold (default 0); pools grow in 2 MiB steps;
 *  - a VMM allocation stays physically allocated until it is released and
 *    its last mapping is gone;
 *  - an array's size follows its format (planar YUV, block-compressed and
 *    packed formats included) with rows padded to 512 bytes, and
 *    cuArrayGetMemoryRequirements reports that size (for every array, or
 *    with FAKE_ARRAY_MEMREQ=deferred only for deferred-mapping ones);
 *  - memory calls before cuInit fail with CUDA_ERROR_NOT_INITIALIZED.
 * A process's memory is returned at its normal exit; a SIGKILLed process's
 * is not (the shared state has no per-process ledger). Stream-ordered frees
 * are applied at the process's next memory call or synchronisation after
 * their time: other processes see them from then on. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "fake_gpu.h"
#include "fake_mem.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OBJ_MAGIC 0xa110ca7eu
#define POOL_MAGIC 0x900150f1u
#define POOL_GRANULE (2ull << 20)
#define ROW_ALIGN 512

enum { OBJ_PLAIN, OBJ_POOL, OBJ_VMM, OBJ_MODULE, OBJ_GRAPH /* a captured allocation: no memory of its own */ };
struct fobj {
    uint32_t magic;
    int kind;
    int dev;                          /* host index */
    uint64_t size;
    struct CUmemPoolHandle_st *pool;  /* OBJ_POOL */
    int maps, released;               /* OBJ_VMM */
    int deferred;                     /* an array created with CUDA_ARRAY3D_DEFERRED_MAPPING */
};
struct CUmemPoolHandle_st {
    uint32_t magic;
    int dev;                          /* host index */
    int destroyed;
    uint64_t reserved, used, threshold, reserved_high, used_high;
    struct CUmemPoolHandle_st *next;
};
#define MAX_KERNELS 64
struct CUmod_st {
    struct fobj *o;                   /* the module's eagerly loaded part */
    int lazy, nk;
    char *kname[MAX_KERNELS];         /* kernels loaded lazily so far */
    struct fobj *kmem[MAX_KERNELS];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct CUmemPoolHandle_st defpool[FG_MAX_DEV];  /* by ordinal */
static struct CUmemPoolHandle_st *curpool[FG_MAX_DEV]; /* cuDeviceSetMemPool */
static struct CUmemPoolHandle_st *created;             /* cuMemPoolCreate'd */
static struct pending { struct fobj *o; int lane; uint64_t seq; } *pend;
static size_t npend, cappend;
static struct mapping { CUdeviceptr p; size_t size; struct fobj *o; } *maps;
static size_t nmaps, capmaps;
static uint64_t held[FG_MAX_DEV]; /* bytes this process holds, per host index */
static uint64_t graph_reserved[FG_MAX_DEV]; /* the graph memory pool's reserve, per host index */
static uint64_t next_va = 0x7f0000000000ull;

static uint64_t env_bytes(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? fg_parse_size(v) : 0;
}

/* Physical memory, counted per process so that a normal exit returns it. */
static int take(int h, uint64_t n)
{
    if (fg_phys_alloc(h, n)) return -1;
    held[h] += n;
    return 0;
}
static void give(int h, uint64_t n)
{
    fg_phys_free(h, n);
    held[h] -= n;
}

static struct fobj *new_obj(int kind, int h, uint64_t size)
{
    struct fobj *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->magic = OBJ_MAGIC; o->kind = kind; o->dev = h; o->size = size;
    return o;
}
static struct fobj *obj(uint64_t handle, int kind)
{
    struct fobj *o = (struct fobj *)(uintptr_t)handle;
    return o && o->magic == OBJ_MAGIC && o->kind == kind ? o : NULL;
}
static void kill_obj(struct fobj *o) { o->magic = 0; free(o); }

static void pool_release_to(struct CUmemPoolHandle_st *p, uint64_t keep)
{
    uint64_t floor = keep > p->used ? keep : p->used;
    if (p->reserved > floor) {
        give(p->dev, p->reserved - floor);
        p->reserved = floor;
    }
}

/* A free of o takes effect now: pool memory goes back to its pool, the rest
 * back to the device. */
static void finish_free(struct fobj *o)
{
    if (o->kind == OBJ_POOL) {
        struct CUmemPoolHandle_st *p = o->pool;
        p->used -= o->size;
        if (p->destroyed) pool_release_to(p, 0);
    } else if (o->kind != OBJ_GRAPH) {
        give(o->dev, o->size);
    }
    kill_obj(o);
}

static void apply_pending(void)
{
    uint64_t now = fg_now(), t;
    size_t j = 0;
    for (size_t i = 0; i < npend; i++) {
        if (fg_lane_query(pend[i].lane, pend[i].seq, &t) && t <= now) finish_free(pend[i].o);
        else pend[j++] = pend[i];
    }
    npend = j;
}

/* Everything below runs under mu with pending frees applied. */
#define ENTER() do { if (!fk_initialized()) return CUDA_ERROR_NOT_INITIALIZED; pthread_mutex_lock(&mu); apply_pending(); } while (0)
#define LEAVE(r) do { CUresult r_ = (r); pthread_mutex_unlock(&mu); return r_; } while (0)

static CUresult plain_on(int ordinal, uint64_t n, int kind, struct fobj **out)
{
    int h = fk_host(ordinal);
    if (h < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (n == 0) return CUDA_ERROR_INVALID_VALUE;
    if (take(h, n)) return CUDA_ERROR_OUT_OF_MEMORY;
    struct fobj *o = new_obj(kind, h, n);
    if (!o) { give(h, n); return CUDA_ERROR_OUT_OF_MEMORY; }
    *out = o;
    return CUDA_SUCCESS;
}
static CUresult plain_cur(uint64_t n, uint64_t *out)
{
    int d = fk_current_dev();
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    struct fobj *o = NULL;
    CUresult r = plain_on(d, n, OBJ_PLAIN, &o);
    if (r == CUDA_SUCCESS) *out = (uint64_t)(uintptr_t)o;
    return r;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { ENTER(); LEAVE(plain_cur(n, p)); }
CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned esz)
{
    (void)esz;
    ENTER();
    *pitch = (w + ROW_ALIGN - 1) & ~(size_t)(ROW_ALIGN - 1);
    LEAVE(plain_cur(*pitch * h, p));
}
CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned f) { (void)f; ENTER(); LEAVE(plain_cur(n, p)); }

/* ---- stream-ordered allocator ---- */
static struct CUmemPoolHandle_st *default_pool(int ordinal)
{
    struct CUmemPoolHandle_st *p = &defpool[ordinal];
    if (!p->magic) { p->magic = POOL_MAGIC; p->dev = fk_host(ordinal); }
    return p;
}
static struct CUmemPoolHandle_st *pool_ok(CUmemoryPool p)
{
    return p && p->magic == POOL_MAGIC && !p->destroyed ? p : NULL;
}

static CUresult pool_alloc(struct CUmemPoolHandle_st *p, uint64_t n, uint64_t *out)
{
    if (n == 0) return CUDA_ERROR_INVALID_VALUE;
    uint64_t spare = p->reserved - p->used;
    if (spare < n) {
        uint64_t grow = (n - spare + POOL_GRANULE - 1) / POOL_GRANULE * POOL_GRANULE;
        if (take(p->dev, grow)) return CUDA_ERROR_OUT_OF_MEMORY;
        p->reserved += grow;
    }
    struct fobj *o = new_obj(OBJ_POOL, p->dev, n);
    if (!o) return CUDA_ERROR_OUT_OF_MEMORY;
    o->pool = p;
    p->used += n;
    if (p->used > p->used_high) p->used_high = p->used;
    if (p->reserved > p->reserved_high) p->reserved_high = p->reserved;
    *out = (uint64_t)(uintptr_t)o;
    return CUDA_SUCCESS;
}

/* 1 and *out set if s is being captured: the allocation becomes a memory
 * node of the graph, with an address and no memory until the graph runs. */
static int captured_alloc(CUstream s, int d, uint64_t n, uint64_t *out, CUresult *r)
{
    if (fk_capture_alloc(s, n) != 1) return 0;
    struct fobj *o = n ? new_obj(OBJ_GRAPH, fk_host(d), n) : NULL;
    *r = o ? CUDA_SUCCESS : n ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_ERROR_INVALID_VALUE;
    if (o) *out = (uint64_t)(uintptr_t)o;
    return 1;
}

static CUresult alloc_async(CUdeviceptr *p, size_t n, CUstream s)
{
    int d;
    uint64_t t;
    CUresult r;
    if (fk_stream(s, &d, &t)) return CUDA_ERROR_INVALID_CONTEXT;
    if (captured_alloc(s, d, n, p, &r)) return r;
    struct CUmemPoolHandle_st *pool = curpool[d] ? curpool[d] : default_pool(d);
    return pool_alloc(pool, n, p);
}
CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) { ENTER(); LEAVE(alloc_async(p, n, s)); }
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s) { ENTER(); LEAVE(alloc_async(p, n, s)); }
static CUresult alloc_from_pool(CUdeviceptr *p, size_t n, CUmemoryPool pl, CUstream s)
{
    int d;
    uint64_t t;
    if (fk_stream(s, &d, &t)) return CUDA_ERROR_INVALID_CONTEXT;
    struct CUmemPoolHandle_st *pool = pool_ok(pl);
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    CUresult r;
    if (captured_alloc(s, d, n, p, &r)) return r;
    return pool_alloc(pool, n, p); /* memory of the pool's device, whatever the stream's */
}
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, CUmemoryPool pl, CUstream s)
{
    ENTER();
    LEAVE(alloc_from_pool(p, n, pl, s));
}
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, CUmemoryPool pl, CUstream s)
{
    ENTER();
    LEAVE(alloc_from_pool(p, n, pl, s));
}

static CUresult free_now(CUdeviceptr p)
{
    struct fobj *o = obj(p, OBJ_PLAIN);
    if (!o) o = obj(p, OBJ_POOL);
    if (!o) o = obj(p, OBJ_GRAPH);
    if (!o) return CUDA_ERROR_INVALID_VALUE;
    finish_free(o);
    return CUDA_SUCCESS;
}
static CUresult free_async(CUdeviceptr p, CUstream s)
{
    struct fobj *o = obj(p, OBJ_PLAIN);
    if (!o) o = obj(p, OBJ_POOL);
    if (!o && (o = obj(p, OBJ_GRAPH))) { finish_free(o); return CUDA_SUCCESS; } /* a free node of its graph */
    if (!o) return CUDA_ERROR_INVALID_VALUE;
    int lane;
    uint64_t seq = 0;
    if (npend == cappend) {
        size_t c = cappend ? cappend * 2 : 64;
        struct pending *n = realloc(pend, c * sizeof *n);
        if (!n) return CUDA_ERROR_OUT_OF_MEMORY;
        pend = n; cappend = c;
    }
    if (fk_stream_marker(s, &lane, &seq)) return CUDA_ERROR_INVALID_HANDLE;
    if (lane < 0) { finish_free(o); return CUDA_SUCCESS; }
    pend[npend++] = (struct pending){o, lane, seq};
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) { ENTER(); LEAVE(free_now(p)); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { ENTER(); LEAVE(free_async(p, s)); }
CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { ENTER(); LEAVE(free_async(p, s)); }

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d)
{
    ENTER();
    if (fk_host(d) < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    *pool = default_pool(d);
    LEAVE(CUDA_SUCCESS);
}
CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice d)
{
    ENTER();
    if (fk_host(d) < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    *pool = curpool[d] ? curpool[d] : default_pool(d);
    LEAVE(CUDA_SUCCESS);
}
CUresult cuDeviceSetMemPool(CUdevice d, CUmemoryPool pool)
{
    ENTER();
    if (fk_host(d) < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    if (!pool_ok(pool) || pool->dev != fk_host(d)) LEAVE(CUDA_ERROR_INVALID_VALUE);
    curpool[d] = pool;
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    ENTER();
    if (!props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE) LEAVE(CUDA_ERROR_INVALID_VALUE);
    int h = fk_host(props->location.id);
    if (h < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (!p) LEAVE(CUDA_ERROR_OUT_OF_MEMORY);
    p->magic = POOL_MAGIC;
    p->dev = h;
    p->next = created;
    created = p;
    *pool = p;
    LEAVE(CUDA_SUCCESS);
}
/* Outstanding allocations keep the pool's memory until they are freed
 * (CUDA: resources are released once there are no outstanding allocations). */
CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    ENTER();
    struct CUmemPoolHandle_st *p = pool_ok(pool);
    if (!p || (p >= defpool && p < defpool + FG_MAX_DEV)) LEAVE(CUDA_ERROR_INVALID_VALUE);
    p->destroyed = 1;
    for (int d = 0; d < FG_MAX_DEV; d++)
        if (curpool[d] == p) curpool[d] = NULL;
    pool_release_to(p, 0);
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    ENTER();
    struct CUmemPoolHandle_st *p = pool_ok(pool);
    if (!p || !value) LEAVE(CUDA_ERROR_INVALID_VALUE);
    cuuint64_t *v = value;
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *(int *)value = 1; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *v = p->threshold; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *v = p->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *v = p->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *v = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *v = p->used_high; break;
    default: LEAVE(CUDA_ERROR_INVALID_VALUE);
    }
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    ENTER();
    struct CUmemPoolHandle_st *p = pool_ok(pool);
    if (!p || !value) LEAVE(CUDA_ERROR_INVALID_VALUE);
    cuuint64_t v = *(cuuint64_t *)value;
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: p->threshold = v; break;
    /* the high-water marks can only be reset, to 0 */
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: if (v) LEAVE(CUDA_ERROR_INVALID_VALUE); p->reserved_high = p->reserved; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: if (v) LEAVE(CUDA_ERROR_INVALID_VALUE); p->used_high = p->used; break;
    default: LEAVE(CUDA_ERROR_INVALID_VALUE);
    }
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    ENTER();
    struct CUmemPoolHandle_st *p = pool_ok(pool);
    if (!p) LEAVE(CUDA_ERROR_INVALID_VALUE);
    pool_release_to(p, keep);
    LEAVE(CUDA_SUCCESS);
}

void fm_on_sync(void)
{
    if (!fk_initialized()) return;
    pthread_mutex_lock(&mu);
    apply_pending();
    for (int d = 0; d < FG_MAX_DEV; d++)
        if (defpool[d].magic) pool_release_to(&defpool[d], defpool[d].threshold);
    for (struct CUmemPoolHandle_st *p = created; p; p = p->next)
        if (!p->destroyed) pool_release_to(p, p->threshold);
    pthread_mutex_unlock(&mu);
}

/* ---- virtual memory management ---- */
CUresult cuMemCreate(CUmemGenericAllocationHandle *hd, size_t n, const CUmemAllocationProp *prop, unsigned long long f)
{
    (void)f;
    ENTER();
    if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) LEAVE(CUDA_ERROR_INVALID_VALUE);
    struct fobj *o = NULL;
    CUresult r = plain_on(prop->location.id, n, OBJ_VMM, &o);
    if (r == CUDA_SUCCESS) *hd = (uint64_t)(uintptr_t)o;
    LEAVE(r);
}
/* The handle goes; the memory stays while a mapping uses it. */
CUresult cuMemRelease(CUmemGenericAllocationHandle hd)
{
    ENTER();
    struct fobj *o = obj(hd, OBJ_VMM);
    if (!o || o->released) LEAVE(CUDA_ERROR_INVALID_VALUE);
    if (o->maps) o->released = 1;
    else finish_free(o);
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemAddressReserve(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr, unsigned long long f)
{
    (void)align; (void)addr; (void)f;
    ENTER();
    if (!p || !size) LEAVE(CUDA_ERROR_INVALID_VALUE);
    *p = next_va;
    next_va += (size + POOL_GRANULE - 1) / POOL_GRANULE * POOL_GRANULE;
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemAddressFree(CUdeviceptr p, size_t size) { (void)p; (void)size; ENTER(); LEAVE(CUDA_SUCCESS); }
CUresult cuMemMap(CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle hd, unsigned long long f)
{
    (void)f;
    ENTER();
    struct fobj *o = obj(hd, OBJ_VMM);
    if (!o || o->released || offset + size > o->size || !size) LEAVE(CUDA_ERROR_INVALID_VALUE);
    if (nmaps == capmaps) {
        size_t c = capmaps ? capmaps * 2 : 64;
        struct mapping *n = realloc(maps, c * sizeof *n);
        if (!n) LEAVE(CUDA_ERROR_OUT_OF_MEMORY);
        maps = n; capmaps = c;
    }
    maps[nmaps++] = (struct mapping){p, size, o};
    o->maps++;
    LEAVE(CUDA_SUCCESS);
}
/* The last unmap of a released allocation frees its memory. */
CUresult cuMemUnmap(CUdeviceptr p, size_t size)
{
    ENTER();
    int found = 0;
    size_t j = 0;
    for (size_t i = 0; i < nmaps; i++) {
        struct mapping m = maps[i];
        if (m.p >= p && m.p + m.size <= p + size) {
            found = 1;
            if (--m.o->maps == 0 && m.o->released) finish_free(m.o);
        } else {
            maps[j++] = m;
        }
    }
    nmaps = j;
    LEAVE(found ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE);
}

/* ---- arrays ---- */
/* Bytes of one row of w elements (of bh rows when block-compressed) and the
 * number of such rows in a plane of height h; 0 for an unknown format. */
static uint64_t row_bytes(CUarray_format f, unsigned ch, uint64_t w, uint64_t h, uint64_t *rows)
{
    *rows = h;
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return w * ch;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return w * 2 * ch;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return w * 4 * ch;
    case CU_AD_FORMAT_UNORM_INT8X1: case CU_AD_FORMAT_SNORM_INT8X1: return w;
    case CU_AD_FORMAT_UNORM_INT8X2: case CU_AD_FORMAT_SNORM_INT8X2: case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1: return w * 2;
    case CU_AD_FORMAT_UNORM_INT8X4: case CU_AD_FORMAT_SNORM_INT8X4: case CU_AD_FORMAT_UNORM_INT16X2:
    case CU_AD_FORMAT_SNORM_INT16X2: case CU_AD_FORMAT_UNORM_INT_101010_2: return w * 4;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4: return w * 8;
    case CU_AD_FORMAT_BC1_UNORM: case CU_AD_FORMAT_BC1_UNORM_SRGB: case CU_AD_FORMAT_BC4_UNORM:
    case CU_AD_FORMAT_BC4_SNORM: *rows = (h + 3) / 4; return (w + 3) / 4 * 8;
    case CU_AD_FORMAT_BC2_UNORM: case CU_AD_FORMAT_BC2_UNORM_SRGB: case CU_AD_FORMAT_BC3_UNORM:
    case CU_AD_FORMAT_BC3_UNORM_SRGB: case CU_AD_FORMAT_BC5_UNORM: case CU_AD_FORMAT_BC5_SNORM:
    case CU_AD_FORMAT_BC6H_UF16: case CU_AD_FORMAT_BC6H_SF16: case CU_AD_FORMAT_BC7_UNORM:
    case CU_AD_FORMAT_BC7_UNORM_SRGB: *rows = (h + 3) / 4; return (w + 3) / 4 * 16;
    /* 4:2:0 semi-planar: a luma plane and a half-height chroma plane */
    case CU_AD_FORMAT_NV12: *rows = h + (h + 1) / 2; return w;
    case CU_AD_FORMAT_P010: case CU_AD_FORMAT_P016: *rows = h + (h + 1) / 2; return w * 2;
    /* 4:2:2 semi-planar: a full-height chroma plane */
    case CU_AD_FORMAT_NV16: *rows = 2 * h; return w;
    case CU_AD_FORMAT_P210: case CU_AD_FORMAT_P216: *rows = 2 * h; return w * 2;
    /* packed 4:2:2 and 4:4:4 */
    case CU_AD_FORMAT_YUY2: return w * 2;
    case CU_AD_FORMAT_Y210: case CU_AD_FORMAT_Y216: case CU_AD_FORMAT_AYUV: case CU_AD_FORMAT_Y410: return w * 4;
    case CU_AD_FORMAT_Y416: return w * 8;
    /* 4:4:4 planar and semi-planar: three full planes' worth */
    case CU_AD_FORMAT_Y444_PLANAR8: case CU_AD_FORMAT_YUV444_8bit_SemiPlanar: *rows = 3 * h; return w;
    case CU_AD_FORMAT_Y444_PLANAR10: case CU_AD_FORMAT_YUV444_16bit_SemiPlanar: *rows = 3 * h; return w * 2;
    }
    return 0;
}
static uint64_t d1(size_t v) { return v ? v : 1; }
static uint64_t array_size(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    uint64_t rows, rb = row_bytes(d->Format, d->NumChannels, d1(d->Width), d1(d->Height), &rows);
    if (!rb) return 0;
    return (rb + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN * rows * d1(d->Depth);
}
static CUresult array_create(uint64_t *out, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    if (!d || !d->NumChannels) return CUDA_ERROR_INVALID_VALUE;
    int cur = fk_current_dev();
    if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t tot = 0;
    CUDA_ARRAY3D_DESCRIPTOR l = *d;
    int layered = d->Flags & 0x05; /* CUDA_ARRAY3D_LAYERED, CUDA_ARRAY3D_CUBEMAP: depth counts layers */
    for (unsigned i = 0; i < (levels ? levels : 1); i++) {
        uint64_t s = array_size(&l);
        if (!s) return CUDA_ERROR_INVALID_VALUE; /* unknown format */
        tot += s;
        l.Width = l.Width > 1 ? l.Width / 2 : l.Width;
        l.Height = l.Height > 1 ? l.Height / 2 : l.Height;
        if (!layered) l.Depth = l.Depth > 1 ? l.Depth / 2 : l.Depth;
    }
    struct fobj *o = NULL;
    CUresult r = plain_on(cur, tot, OBJ_PLAIN, &o);
    if (r == CUDA_SUCCESS) o->deferred = (d->Flags & 0x80) != 0;
    if (r == CUDA_SUCCESS) *out = (uint64_t)(uintptr_t)o;
    return r;
}
CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d)
{
    ENTER();
    if (!d) LEAVE(CUDA_ERROR_INVALID_VALUE);
    CUDA_ARRAY3D_DESCRIPTOR d3 = {d->Width, d->Height, 0, d->Format, d->NumChannels, 0};
    uint64_t o;
    CUresult r = array_create(&o, &d3, 1);
    if (r == CUDA_SUCCESS) *a = (CUarray)(uintptr_t)o;
    LEAVE(r);
}
CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    ENTER();
    uint64_t o;
    CUresult r = array_create(&o, d, 1);
    if (r == CUDA_SUCCESS) *a = (CUarray)(uintptr_t)o;
    LEAVE(r);
}
CUresult cuMipmappedArrayCreate(CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    ENTER();
    uint64_t o;
    CUresult r = array_create(&o, d, levels);
    if (r == CUDA_SUCCESS) *a = (CUmipmappedArray)(uintptr_t)o;
    LEAVE(r);
}
/* Whether the driver answers for arrays not created with
 * CUDA_ARRAY3D_DEFERRED_MAPPING is not documented: FAKE_ARRAY_MEMREQ=deferred
 * answers only for those, anything else for every array. */
static CUresult requirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, uint64_t handle)
{
    struct fobj *o = obj(handle, OBJ_PLAIN);
    if (!o || !req) return CUDA_ERROR_INVALID_VALUE;
    const char *model = getenv("FAKE_ARRAY_MEMREQ");
    if (model && !strcmp(model, "deferred") && !o->deferred) return CUDA_ERROR_INVALID_VALUE;
    memset(req, 0, sizeof *req);
    req->size = o->size;
    req->alignment = ROW_ALIGN;
    return CUDA_SUCCESS;
}
CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray a, CUdevice d)
{
    (void)d;
    ENTER();
    LEAVE(requirements(req, (uintptr_t)a));
}
CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUmipmappedArray a, CUdevice d)
{
    (void)d;
    ENTER();
    LEAVE(requirements(req, (uintptr_t)a));
}
CUresult cuArrayDestroy(CUarray a) { ENTER(); LEAVE(free_now((uintptr_t)a)); }
CUresult cuMipmappedArrayDestroy(CUmipmappedArray a) { ENTER(); LEAVE(free_now((uintptr_t)a)); }

/* ---- contexts and modules ---- */
CUresult fm_ctx_acquire(CUdevice d)
{
    uint64_t n = env_bytes("FAKE_CTX_MEM");
    int h = fk_host(d);
    if (h < 0) return CUDA_ERROR_INVALID_DEVICE;
    /* creating a context takes time on a real GPU (tens to hundreds of ms on
     * large ones), during which other processes keep allocating */
    const char *delay = getenv("FAKE_CTX_CREATE_MS");
    if (delay && *delay) usleep((useconds_t)strtoul(delay, NULL, 10) * 1000);
    if (!n) return CUDA_SUCCESS;
    pthread_mutex_lock(&mu);
    int r = take(h, n);
    pthread_mutex_unlock(&mu);
    return r ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}
void fm_ctx_release(CUdevice d)
{
    uint64_t n = env_bytes("FAKE_CTX_MEM");
    int h = fk_host(d);
    if (h < 0 || !n) return;
    pthread_mutex_lock(&mu);
    give(h, n);
    pthread_mutex_unlock(&mu);
}
static CUresult module_load(CUmodule *m)
{
    if (!m) return CUDA_ERROR_INVALID_VALUE;
    int d = fk_current_dev();
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    struct CUmod_st *x = calloc(1, sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t n = env_bytes("FAKE_MODULE_MEM");
    if (n) {
        CUresult r = plain_on(d, n, OBJ_MODULE, &x->o);
        if (r != CUDA_SUCCESS) { free(x); return r; }
    }
    const char *mode = getenv("CUDA_MODULE_LOADING");
    x->lazy = mode && !strcmp(mode, "LAZY");
    *m = x;
    return CUDA_SUCCESS;
}
CUresult cuModuleLoad(CUmodule *m, const char *fname) { (void)fname; ENTER(); LEAVE(module_load(m)); }
CUresult cuModuleLoadData(CUmodule *m, const void *image) { (void)image; ENTER(); LEAVE(module_load(m)); }
CUresult cuModuleLoadDataEx(CUmodule *m, const void *image, unsigned int nopts, CUjit_option *opts, void **vals)
{
    (void)image, (void)nopts, (void)opts, (void)vals;
    ENTER();
    LEAVE(module_load(m));
}
CUresult cuModuleLoadFatBinary(CUmodule *m, const void *fatbin) { (void)fatbin; ENTER(); LEAVE(module_load(m)); }

static void module_free(CUmodule m)
{
    if (m->o) finish_free(m->o);
    for (int i = 0; i < m->nk; i++) {
        if (m->kmem[i]) finish_free(m->kmem[i]);
        free(m->kname[i]);
    }
    free(m);
}
/* A library (CUDA 12) is loaded into every context; modelled eagerly: its
 * code takes FAKE_MODULE_MEM in the current context at load, none when no
 * context is current (it would load later, as lazy loading does). */
struct CUlib_st { CUmodule mod; };
static CUresult library_load(CUlibrary *l)
{
    if (!l) return CUDA_ERROR_INVALID_VALUE;
    struct CUlib_st *x = calloc(1, sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    if (fk_current_dev() >= 0) {
        CUresult r = module_load(&x->mod);
        if (r != CUDA_SUCCESS) { free(x); return r; }
    }
    *l = x;
    return CUDA_SUCCESS;
}
CUresult cuLibraryLoadData(CUlibrary *l, const void *code, CUjit_option *jopts, void **jvals, unsigned int njopts,
                           CUlibraryOption *lopts, void **lvals, unsigned int nlopts)
{
    (void)code, (void)jopts, (void)jvals, (void)njopts, (void)lopts, (void)lvals, (void)nlopts;
    ENTER();
    LEAVE(library_load(l));
}
CUresult cuLibraryLoadFromFile(CUlibrary *l, const char *fname, CUjit_option *jopts, void **jvals, unsigned int njopts,
                               CUlibraryOption *lopts, void **lvals, unsigned int nlopts)
{
    (void)fname, (void)jopts, (void)jvals, (void)njopts, (void)lopts, (void)lvals, (void)nlopts;
    ENTER();
    LEAVE(library_load(l));
}
CUresult cuLibraryUnload(CUlibrary l)
{
    ENTER();
    if (!l) LEAVE(CUDA_ERROR_INVALID_VALUE);
    if (l->mod) module_free(l->mod);
    free(l);
    LEAVE(CUDA_SUCCESS);
}
CUresult fm_kernel_load(CUmodule m, const char *name)
{
    uint64_t n = env_bytes("FAKE_KERNEL_MEM");
    if (!m || !m->lazy || !n) return CUDA_SUCCESS; /* NULL: the fake's built-in kernels */
    ENTER();
    for (int i = 0; i < m->nk; i++)
        if (!strcmp(m->kname[i], name)) LEAVE(CUDA_SUCCESS);
    if (m->nk == MAX_KERNELS) LEAVE(CUDA_SUCCESS); /* the fake stops charging; tests stay below */
    int d = fk_current_dev();
    if (d < 0) LEAVE(CUDA_ERROR_INVALID_CONTEXT);
    char *copy = strdup(name);
    if (!copy) LEAVE(CUDA_ERROR_OUT_OF_MEMORY);
    struct fobj *o = NULL;
    CUresult r = plain_on(d, n, OBJ_MODULE, &o);
    if (r != CUDA_SUCCESS) { free(copy); LEAVE(r); }
    m->kname[m->nk] = copy;
    m->kmem[m->nk++] = o;
    LEAVE(CUDA_SUCCESS);
}

CUresult fm_graph_reserve(CUdevice d, uint64_t bytes)
{
    ENTER();
    int h = fk_host(d);
    if (h < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    if (graph_reserved[h] < bytes) {
        if (take(h, bytes - graph_reserved[h])) LEAVE(CUDA_ERROR_OUT_OF_MEMORY);
        graph_reserved[h] = bytes;
    }
    LEAVE(CUDA_SUCCESS);
}
CUresult cuDeviceGraphMemTrim(CUdevice d)
{
    ENTER();
    int h = fk_host(d);
    if (h < 0) LEAVE(CUDA_ERROR_INVALID_DEVICE);
    if (graph_reserved[h]) give(h, graph_reserved[h]);
    graph_reserved[h] = 0;
    LEAVE(CUDA_SUCCESS);
}

CUresult cuModuleUnload(CUmodule m)
{
    ENTER();
    if (!m) LEAVE(CUDA_ERROR_INVALID_VALUE);
    module_free(m);
    LEAVE(CUDA_SUCCESS);
}

CUresult cuMemGetInfo_v2(size_t *f, size_t *t)
{
    ENTER();
    int d = fk_current_dev();
    if (d < 0) LEAVE(CUDA_ERROR_INVALID_CONTEXT);
    int h = fk_host(d);
    uint64_t used = __atomic_load_n(&fg_dev(h)->phys_used, __ATOMIC_SEQ_CST);
    *t = fg.dev[h].mem;
    *f = used < fg.dev[h].mem ? fg.dev[h].mem - used : 0;
    LEAVE(CUDA_SUCCESS);
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned f) { (void)f; *p = malloc(n); return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY; }
CUresult cuMemFreeHost(void *p) { free(p); return CUDA_SUCCESS; }

/* The driver returns a process's device memory when it exits. A forked
 * child has none of its parent's. */
__attribute__((destructor)) static void release_at_exit(void)
{
    for (int h = 0; h < FG_MAX_DEV; h++)
        if (held[h]) fg_phys_free(h, held[h]);
}
static void forget_in_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    mu = fresh;
    memset(held, 0, sizeof held);
    memset(graph_reserved, 0, sizeof graph_reserved);
    npend = 0;
    nmaps = 0;
}
__attribute__((constructor)) static void fm_init(void) { pthread_atfork(NULL, NULL, forget_in_child); }
