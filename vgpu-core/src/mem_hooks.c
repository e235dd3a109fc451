/* Hooks of every driver call that takes or returns device memory, and of the
 * calls that report memory size. */
#include "dispatch.h"
#include "devices.h"
#include "log.h"
#include "memacct.h"

/* The device a call allocates on, or NULL when it is not limited (no
 * accounting at all then: the driver alone decides). */
static struct vgpu_dev *limited(struct vgpu_dev *d) { return d && d->mem_limit ? d : NULL; }

#define ALLOC_BODY(kind, dev, bytes, keyexpr, call)                       \
    do {                                                                  \
        struct vgpu_dev *d_ = (dev);                                      \
        uint64_t b_ = (bytes);                                            \
        if (!d_) return call;                                             \
        if (vgpu_mem_reserve(d_, b_) != 0) return CUDA_ERROR_OUT_OF_MEMORY; \
        CUresult r_ = call;                                               \
        if (r_ == CUDA_SUCCESS) vgpu_mem_track((kind), (uint64_t)(keyexpr), d_, b_); \
        else vgpu_mem_unreserve(d_, b_);                                  \
        return r_;                                                        \
    } while (0)

#define FREE_BODY(kind, key, call)                                        \
    do {                                                                  \
        if (!vgpu_cfg.mem_any) return call;                               \
        struct vgpu_dev *d_ = 0; uint64_t b_ = 0;                         \
        /* out of the table before the driver frees (another thread may get \
         * the address back at once); quota back only after the free, so   \
         * physical use never exceeds the quota */                        \
        int had_ = vgpu_mem_take((kind), (uint64_t)(key), &d_, &b_);      \
        CUresult r_ = call;                                               \
        if (had_ && r_ == CUDA_SUCCESS) vgpu_mem_unreserve(d_, b_);       \
        else if (had_) vgpu_mem_track((kind), (uint64_t)(key), d_, b_);   \
        return r_;                                                        \
    } while (0)

static struct vgpu_dev *cur(void) { return vgpu_cfg.mem_any ? limited(vgpu_dev_current()) : NULL; }

VGPU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAlloc_v2)(p, n);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAlloc_v2)(p, n));
}

VGPU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned esz)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocPitch_v2)(p, pitch, w, h, esz);
    /* the driver pads rows to its pitch; charge at least that, rounded to 512 */
    uint64_t row = (w + 511) & ~(uint64_t)511;
    ALLOC_BODY(VGPU_KIND_PTR, cur(), row * h, *p, REAL(cuMemAllocPitch_v2)(p, pitch, w, h, esz));
}

VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned flags)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocManaged)(p, n, flags);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocManaged)(p, n, flags));
}

VGPU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocAsync)(p, n, s);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocAsync)(p, n, s));
}

VGPU_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocAsync_ptsz)(p, n, s);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocAsync_ptsz)(p, n, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocFromPoolAsync)(p, n, pool, s);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocFromPoolAsync)(p, n, pool, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)
{
    if (!vgpu_cfg.mem_any) return REAL(cuMemAllocFromPoolAsync_ptsz)(p, n, pool, s);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocFromPoolAsync_ptsz)(p, n, pool, s));
}

VGPU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop,
                                 unsigned long long flags)
{
    if (!vgpu_cfg.mem_any || !prop || prop->location.type != 1 /* device */)
        return REAL(cuMemCreate)(h, n, prop, flags);
    ALLOC_BODY(VGPU_KIND_VMM, limited(vgpu_dev_by_ordinal(prop->location.id)), n, *h,
               REAL(cuMemCreate)(h, n, prop, flags));
}

static uint64_t elem_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return 4;
    default: return 16; /* newer/compressed formats: charge the widest element */
    }
}

static uint64_t dim(size_t v) { return v ? v : 1; }

static uint64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch)
{
    return dim(w) * dim(h) * dim(d) * elem_bytes(f) * (ch ? ch : 1);
}

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    if (!vgpu_cfg.mem_any || !desc) return REAL(cuArrayCreate_v2)(a, desc);
    ALLOC_BODY(VGPU_KIND_ARRAY, cur(), array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels),
               *a, REAL(cuArrayCreate_v2)(a, desc));
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    if (!vgpu_cfg.mem_any || !desc) return REAL(cuArray3DCreate_v2)(a, desc);
    ALLOC_BODY(VGPU_KIND_ARRAY, cur(),
               array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels),
               *a, REAL(cuArray3DCreate_v2)(a, desc));
}

VGPU_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned levels)
{
    if (!vgpu_cfg.mem_any || !desc) return REAL(cuMipmappedArrayCreate)(a, desc, levels);
    uint64_t total = 0;
    size_t w = desc->Width, h = desc->Height, d = desc->Depth;
    int layered = desc->Flags & 1; /* CUDA_ARRAY3D_LAYERED: depth is the layer count */
    for (unsigned l = 0; l < (levels ? levels : 1); l++) {
        total += array_bytes(w, h, d, desc->Format, desc->NumChannels);
        w = w > 1 ? w / 2 : w; h = h > 1 ? h / 2 : h;
        if (!layered) d = d > 1 ? d / 2 : d;
    }
    ALLOC_BODY(VGPU_KIND_MIPMAP, cur(), total, *a, REAL(cuMipmappedArrayCreate)(a, desc, levels));
}

VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { FREE_BODY(VGPU_KIND_PTR, p, REAL(cuMemFree_v2)(p)); }
VGPU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { FREE_BODY(VGPU_KIND_PTR, p, REAL(cuMemFreeAsync)(p, s)); }
VGPU_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { FREE_BODY(VGPU_KIND_PTR, p, REAL(cuMemFreeAsync_ptsz)(p, s)); }
VGPU_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) { FREE_BODY(VGPU_KIND_VMM, h, REAL(cuMemRelease)(h)); }
VGPU_EXPORT CUresult cuArrayDestroy(CUarray a) { FREE_BODY(VGPU_KIND_ARRAY, (uintptr_t)a, REAL(cuArrayDestroy)(a)); }
VGPU_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray a)
{
    FREE_BODY(VGPU_KIND_MIPMAP, (uintptr_t)a, REAL(cuMipmappedArrayDestroy)(a));
}

/* total = quota (never above the physical size), free = min(quota - used by
 * the claim, physically free). */
static void quota_view(struct vgpu_dev *d, uint64_t *total, uint64_t *free_b)
{
    vgpu_mem_maybe_reclaim();
    uint64_t limit = d->mem_limit < *total ? d->mem_limit : *total;
    uint64_t used = vgpu_mem_used(d);
    uint64_t left = used < limit ? limit - used : 0;
    *total = limit;
    if (*free_b > left) *free_b = left;
}

VGPU_EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b)
{
    size_t f = 0, t = 0;
    CUresult r = REAL(cuMemGetInfo_v2)(&f, &t);
    struct vgpu_dev *d;
    if (r == CUDA_SUCCESS && vgpu_cfg.mem_any && (d = limited(vgpu_dev_current()))) {
        uint64_t tt = t, ff = f;
        quota_view(d, &tt, &ff);
        t = tt; f = ff;
    }
    if (free_b) *free_b = f;
    if (total_b) *total_b = t;
    return r;
}

VGPU_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult r = REAL(cuDeviceTotalMem_v2)(bytes, dev);
    struct vgpu_dev *d;
    if (r == CUDA_SUCCESS && bytes && vgpu_cfg.mem_any && (d = limited(vgpu_dev_by_ordinal(dev))))
        if (*bytes > d->mem_limit) *bytes = d->mem_limit;
    return r;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m)
{
    nvmlReturn_t r = REAL(nvmlDeviceGetMemoryInfo)(h, m);
    struct vgpu_dev *d;
    if (r == NVML_SUCCESS && m && vgpu_cfg.mem_any && (d = limited(vgpu_dev_by_nvml(h)))) {
        uint64_t t = m->total, f = m->free;
        quota_view(d, &t, &f);
        m->total = t; m->free = f; m->used = t - f;
    }
    return r;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m)
{
    nvmlReturn_t r = REAL(nvmlDeviceGetMemoryInfo_v2)(h, m);
    struct vgpu_dev *d;
    if (r == NVML_SUCCESS && m && vgpu_cfg.mem_any && (d = limited(vgpu_dev_by_nvml(h)))) {
        uint64_t t = m->total, f = m->free;
        quota_view(d, &t, &f);
        m->total = t; m->free = f; m->reserved = 0; m->used = t - f;
    }
    return r;
}
