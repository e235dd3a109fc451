/* Memory the driver takes for the process rather than for an allocation:
 * contexts (the primary context and cuCtxCreate'd ones: hundreds of MiB
 * each on large GPUs) and loaded modules. It is charged to the claim like
 * an allocation, so that the claims' quotas, not quotas plus contexts, are
 * what a GPU must hold (README "What the driver takes").
 *
 * Method: the device's free memory is read just before and just after the
 * driver creates the context or loads the module; the drop, less what the
 * claim's own processes allocated meanwhile (the region's total), is
 * charged. Contexts are measured through NVML (no context is needed to ask
 * it), modules through cuMemGetInfo of the current context. The error:
 * memory processes of other claims allocate or free on the GPU during
 * those few milliseconds is charged to (or subtracted from) this process;
 * the charge is clamped at 0. Kernels that CUDA's lazy loading loads at
 * their first launch, and libraries loaded into contexts other than the
 * one current at cuLibraryLoad*, are not measured. The charge is recorded even when it
 * does not fit the quota (a noisy measurement must not break a context):
 * the claim's next allocations are refused until it is back under. */
#include "dispatch.h"
#include "devices.h"
#include "log.h"
#include "memacct.h"
#include "limiter.h"
#include <pthread.h>

#define MAX_ORD 64
static struct { int refs; uint64_t bytes; } primary[MAX_ORD];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static struct vgpu_dev *limited_dev(CUdevice d)
{
    vgpu_ensure_init();
    if (!vgpu_cfg.mem_any) return NULL;
    struct vgpu_dev *v = vgpu_dev_by_ordinal(d);
    return v && v->mem_limit ? v : NULL;
}

static int nvml_free(struct vgpu_dev *d, uint64_t *f) { return vgpu_dev_nvml_free(d, f); }
static int cuda_free(struct vgpu_dev *d, uint64_t *f)
{
    (void)d;
    size_t fr = 0, t = 0;
    if (REAL(cuMemGetInfo_v2)(&fr, &t) != CUDA_SUCCESS) return -1;
    *f = fr;
    return 0;
}

/* A reading of the device's free memory and of the claim's usage. */
struct reading { uint64_t free_b, claim; };
static int read_nvml(struct vgpu_dev *d, struct reading *r)
{
    r->claim = vgpu_mem_used(d);
    return nvml_free(d, &r->free_b);
}
static int read_cuda(struct vgpu_dev *d, struct reading *r)
{
    r->claim = vgpu_mem_used(d);
    return cuda_free(d, &r->free_b);
}

/* What the driver took between two readings, net of the claim's own
 * allocations and frees meanwhile. */
static uint64_t took(const struct reading *a, const struct reading *b)
{
    int64_t dropped = (int64_t)(a->free_b - b->free_b);
    int64_t own = (int64_t)(b->claim - a->claim);
    return dropped - own > 0 ? (uint64_t)(dropped - own) : 0;
}

static void charge(struct vgpu_dev *d, uint64_t bytes, const char *what)
{
    if (!bytes) return;
    vgpu_procmem_driver_charged(d, bytes);
    if (vgpu_mem_reserve(d, bytes) == 0) {
        LOG_DEBUG("%s on %s took %llu bytes: charged", what, d->uuid, (unsigned long long)bytes);
        return;
    }
    LOG_WARN("%s on %s took %llu bytes, more than the quota has left: charged, allocations are refused until "
             "usage is back under the quota", what, d->uuid, (unsigned long long)bytes);
    vgpu_mem_charge(d, bytes);
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice dev)
{
    struct vgpu_dev *d = limited_dev(dev);
    if (!d || dev < 0 || dev >= MAX_ORD) return REAL(cuDevicePrimaryCtxRetain)(c, dev);
    pthread_mutex_lock(&mu);
    struct reading before, after;
    int measured = primary[dev].refs == 0 && read_nvml(d, &before) == 0;
    CUresult r = REAL(cuDevicePrimaryCtxRetain)(c, dev);
    if (r == CUDA_SUCCESS) {
        if (measured && read_nvml(d, &after) == 0) {
            uint64_t b = took(&before, &after);
            charge(d, b, "the primary context");
            primary[dev].bytes = b;
        }
        primary[dev].refs++;
    }
    pthread_mutex_unlock(&mu);
    return r;
}

static void primary_gone(CUdevice dev)
{
    struct vgpu_dev *d = vgpu_dev_by_ordinal(dev);
    if (d && primary[dev].bytes) vgpu_mem_unreserve(d, vgpu_procmem_driver_released(d, primary[dev].bytes));
    primary[dev].bytes = 0;
    primary[dev].refs = 0;
}

/* The driver destroys the primary context at its last release. */
VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    vgpu_procmem_hold(); /* the driver frees the context before its charge goes */
    CUresult r = vgpu_lim_primary_release(dev); /* the real release, and the limiter forgets the context */
    if (r == CUDA_SUCCESS && dev >= 0 && dev < MAX_ORD && limited_dev(dev)) {
        pthread_mutex_lock(&mu);
        if (primary[dev].refs && --primary[dev].refs == 0) primary_gone(dev);
        pthread_mutex_unlock(&mu);
    }
    vgpu_procmem_release();
    return r;
}

void vgpu_drvmem_primary_reset(CUdevice dev)
{
    if (dev < 0 || dev >= MAX_ORD || !limited_dev(dev)) return;
    pthread_mutex_lock(&mu);
    primary_gone(dev);
    pthread_mutex_unlock(&mu);
}

/* Every cuCtxCreate version creates a context the same way; the newer
 * ones take affinity or creation parameters (CUDA 11.4: _v3, 12.5: _v4,
 * which cuGetProcAddress hands to callers built for those versions). */
#define CTX_CREATE(c, dev, call)                                                      \
    do {                                                                              \
        struct vgpu_dev *d_ = limited_dev(dev);                                       \
        if (!d_) return call;                                                         \
        if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;                    \
        struct reading before_, after_;                                               \
        vgpu_procmem_hold();                                                          \
        int measured_ = read_nvml(d_, &before_) == 0;                                 \
        CUresult r_ = call;                                                           \
        uint64_t b_ = r_ == CUDA_SUCCESS && measured_ && read_nvml(d_, &after_) == 0 ? took(&before_, &after_) : 0; \
        if (r_ == CUDA_SUCCESS) charge(d_, b_, "a context");                          \
        if (r_ == CUDA_SUCCESS) vgpu_mem_track(VGPU_KIND_CTX, (uintptr_t)*(c), d_, b_); \
        else vgpu_mem_unbook();                                                       \
        vgpu_procmem_release();                                                       \
        return r_;                                                                    \
    } while (0)

VGPU_EXPORT CUresult cuCtxCreate_v2(CUcontext *c, unsigned flags, CUdevice dev)
{
    CTX_CREATE(c, dev, REAL(cuCtxCreate_v2)(c, flags, dev));
}
VGPU_EXPORT CUresult cuCtxCreate_v3(CUcontext *c, CUexecAffinityParam *params, int nparams, unsigned flags, CUdevice dev)
{
    CTX_CREATE(c, dev, REAL(cuCtxCreate_v3)(c, params, nparams, flags, dev));
}
VGPU_EXPORT CUresult cuCtxCreate_v4(CUcontext *c, CUctxCreateParams *params, unsigned flags, CUdevice dev)
{
    CTX_CREATE(c, dev, REAL(cuCtxCreate_v4)(c, params, flags, dev));
}

/* The compute limiter's per-context cleanup belongs here too. */
VGPU_EXPORT CUresult cuCtxDestroy_v2(CUcontext c)
{
    vgpu_ensure_init();
    if (!vgpu_cfg.mem_any) return vgpu_lim_ctx_destroy(c); /* the limiter forgets its events and bursts */
    struct vgpu_dev *d = NULL;
    uint64_t b = 0;
    vgpu_procmem_hold(); /* the driver frees before the charge goes */
    int had = vgpu_mem_take(VGPU_KIND_CTX, (uintptr_t)c, &d, &b);
    CUresult r = vgpu_lim_ctx_destroy(c);
    if (had && r == CUDA_SUCCESS) vgpu_mem_unreserve(d, vgpu_procmem_driver_released(d, b));
    else if (had) vgpu_mem_retrack(VGPU_KIND_CTX, (uintptr_t)c, d, b);
    vgpu_procmem_release();
    return r;
}

/* Modules: measured in the current context. */
#define MODULE_LOAD(m, call)                                                          \
    do {                                                                              \
        vgpu_ensure_init();                                                           \
        struct vgpu_dev *d_ = vgpu_cfg.mem_any ? vgpu_dev_current() : NULL;           \
        if (!d_ || !d_->mem_limit) return call;                                       \
        if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;                    \
        struct reading before_, after_;                                               \
        vgpu_procmem_hold();                                                          \
        int measured_ = read_cuda(d_, &before_) == 0;                                 \
        CUresult r_ = call;                                                           \
        uint64_t b_ = r_ == CUDA_SUCCESS && measured_ && read_cuda(d_, &after_) == 0 ? took(&before_, &after_) : 0; \
        if (r_ == CUDA_SUCCESS) charge(d_, b_, "a module");                           \
        if (r_ == CUDA_SUCCESS) vgpu_mem_track(VGPU_KIND_MODULE, (uintptr_t)*(m), d_, b_); \
        else vgpu_mem_unbook();                                                       \
        vgpu_procmem_release();                                                       \
        return r_;                                                                    \
    } while (0)

VGPU_EXPORT CUresult cuModuleLoad(CUmodule *m, const char *fname) { MODULE_LOAD(m, REAL(cuModuleLoad)(m, fname)); }
VGPU_EXPORT CUresult cuModuleLoadData(CUmodule *m, const void *image) { MODULE_LOAD(m, REAL(cuModuleLoadData)(m, image)); }
VGPU_EXPORT CUresult cuModuleLoadDataEx(CUmodule *m, const void *image, unsigned nopts, CUjit_option *opts, void **vals)
{
    MODULE_LOAD(m, REAL(cuModuleLoadDataEx)(m, image, nopts, opts, vals));
}
VGPU_EXPORT CUresult cuModuleLoadFatBinary(CUmodule *m, const void *fatbin)
{
    MODULE_LOAD(m, REAL(cuModuleLoadFatBinary)(m, fatbin));
}

/* Libraries (CUDA 12) are context-independent: what loading one takes in
 * the current context is measured like a module; what it takes later in
 * other contexts, or at a kernel's first use under lazy loading, is not. */
VGPU_EXPORT CUresult cuLibraryLoadData(CUlibrary *l, const void *code, CUjit_option *jopts, void **jvals, unsigned njopts,
                                       CUlibraryOption *lopts, void **lvals, unsigned nlopts)
{
    MODULE_LOAD(l, REAL(cuLibraryLoadData)(l, code, jopts, jvals, njopts, lopts, lvals, nlopts));
}
VGPU_EXPORT CUresult cuLibraryLoadFromFile(CUlibrary *l, const char *fname, CUjit_option *jopts, void **jvals,
                                           unsigned njopts, CUlibraryOption *lopts, void **lvals, unsigned nlopts)
{
    MODULE_LOAD(l, REAL(cuLibraryLoadFromFile)(l, fname, jopts, jvals, njopts, lopts, lvals, nlopts));
}

/* What a module or library load was charged goes back when it is unloaded. */
#define UNLOAD(h, call)                                                               \
    do {                                                                              \
        vgpu_ensure_init();                                                           \
        if (!vgpu_cfg.mem_any) return call;                                           \
        struct vgpu_dev *d_ = NULL;                                                   \
        uint64_t b_ = 0;                                                              \
        vgpu_procmem_hold();                                                          \
        int had_ = vgpu_mem_take(VGPU_KIND_MODULE, (uintptr_t)(h), &d_, &b_);         \
        CUresult r_ = call;                                                           \
        if (had_ && r_ == CUDA_SUCCESS) vgpu_mem_unreserve(d_, vgpu_procmem_driver_released(d_, b_)); \
        else if (had_) vgpu_mem_retrack(VGPU_KIND_MODULE, (uintptr_t)(h), d_, b_);    \
        vgpu_procmem_release();                                                       \
        if (r_ == CUDA_SUCCESS) vgpu_procmem_dirty(vgpu_dev_current()); /* lazily loaded code went too */ \
        return r_;                                                                    \
    } while (0)

VGPU_EXPORT CUresult cuModuleUnload(CUmodule m) { UNLOAD(m, REAL(cuModuleUnload)(m)); }
VGPU_EXPORT CUresult cuLibraryUnload(CUlibrary l) { UNLOAD(l, REAL(cuLibraryUnload)(l)); }

/* Under lazy loading a kernel's code is loaded when it is first fetched
 * (driver API) or launched (runtime): memory no allocation names, charged
 * from NVML's figure for this process at the next memory call. */
VGPU_EXPORT CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
    vgpu_ensure_init();
    CUresult r = REAL(cuModuleGetFunction)(f, m, name);
    if (r == CUDA_SUCCESS && vgpu_cfg.mem_any) vgpu_procmem_dirty(vgpu_dev_current());
    return r;
}

/* The graph memory pool gives back what no graph uses. */
VGPU_EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev)
{
    CUresult r = REAL(cuDeviceGraphMemTrim)(dev);
    struct vgpu_dev *d;
    if (r == CUDA_SUCCESS && (d = limited_dev(dev))) vgpu_procmem_dirty(d);
    return r;
}

void vgpu_drvmem_atfork_child(void)
{
    /* a forked child has none of its parent's contexts */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    mu = fresh;
    for (int i = 0; i < MAX_ORD; i++) primary[i].refs = 0, primary[i].bytes = 0;
}
