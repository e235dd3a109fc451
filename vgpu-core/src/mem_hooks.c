/* Hooks of every driver call that takes or returns device memory, and of the
 * calls that report memory size. Memory pools are in pools.c, what the
 * driver takes for contexts and modules in drvmem.c. */
#include "dispatch.h"
#include "devices.h"
#include "log.h"
#include "memacct.h"

/* The device a call allocates on, or NULL when it is not limited (no
 * accounting at all then: the driver alone decides). */
static struct vgpu_dev *limited(struct vgpu_dev *d) { return d && d->mem_limit ? d : NULL; }
static int mem_on(void) { vgpu_ensure_init(); return vgpu_cfg.mem_any; }

/* Reserve quota and a table entry, call the driver, track or undo. */
#define ALLOC_BODY(kind, dev, bytes, keyexpr, call)                       \
    do {                                                                  \
        struct vgpu_dev *d_ = (dev);                                      \
        uint64_t b_ = (bytes);                                            \
        if (!d_) return call;                                             \
        if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;        \
        if (vgpu_mem_reserve(d_, b_) != 0) { vgpu_mem_unbook(); return CUDA_ERROR_OUT_OF_MEMORY; } \
        CUresult r_ = call;                                               \
        if (r_ == CUDA_SUCCESS) vgpu_mem_track((kind), (uint64_t)(keyexpr), d_, b_); \
        else { vgpu_mem_unbook(); vgpu_mem_unreserve(d_, b_); }           \
        return r_;                                                        \
    } while (0)

#define FREE_BODY(kind, key, call)                                        \
    do {                                                                  \
        if (!mem_on()) return call;                                       \
        struct vgpu_dev *d_ = 0; uint64_t b_ = 0;                         \
        /* out of the table before the driver frees (another thread may get \
         * the address back at once); quota back only after the free, so   \
         * physical use never exceeds the quota */                        \
        int had_ = vgpu_mem_take((kind), (uint64_t)(key), &d_, &b_);      \
        CUresult r_ = call;                                               \
        if (had_ && r_ == CUDA_SUCCESS) vgpu_mem_unreserve(d_, b_);       \
        else if (had_) vgpu_mem_retrack((kind), (uint64_t)(key), d_, b_); \
        return r_;                                                        \
    } while (0)

static struct vgpu_dev *cur(void) { return limited(vgpu_dev_current()); }

VGPU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n)
{
    if (!mem_on()) return REAL(cuMemAlloc_v2)(p, n);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAlloc_v2)(p, n));
}

VGPU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned esz)
{
    if (!mem_on()) return REAL(cuMemAllocPitch_v2)(p, pitch, w, h, esz);
    /* the driver pads rows to its pitch; charge at least that, rounded to 512 */
    uint64_t row = (w + 511) & ~(uint64_t)511;
    ALLOC_BODY(VGPU_KIND_PTR, cur(), row * h, *p, REAL(cuMemAllocPitch_v2)(p, pitch, w, h, esz));
}

VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned flags)
{
    if (!mem_on()) return REAL(cuMemAllocManaged)(p, n, flags);
    ALLOC_BODY(VGPU_KIND_PTR, cur(), n, *p, REAL(cuMemAllocManaged)(p, n, flags));
}

VGPU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop,
                                 unsigned long long flags)
{
    if (!mem_on() || !prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return REAL(cuMemCreate)(h, n, prop, flags);
    ALLOC_BODY(VGPU_KIND_VMM, limited(vgpu_dev_by_ordinal(prop->location.id)), n, *h,
               REAL(cuMemCreate)(h, n, prop, flags));
}

VGPU_EXPORT CUresult cuMemMap(CUdeviceptr va, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                              unsigned long long flags)
{
    if (!mem_on()) return REAL(cuMemMap)(va, size, offset, h, flags);
    if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMemMap)(va, size, offset, h, flags);
    if (r == CUDA_SUCCESS) vgpu_vmm_mapped(h, va, size);
    else vgpu_mem_unbook();
    return r;
}

/* The driver frees a released allocation at its last unmap. */
VGPU_EXPORT CUresult cuMemUnmap(CUdeviceptr va, size_t size)
{
    CUresult r = REAL(cuMemUnmap)(va, size);
    if (r == CUDA_SUCCESS && mem_on()) {
        struct vgpu_dev *d = NULL;
        uint64_t back = vgpu_vmm_unmapped(va, size, &d);
        if (back && d) vgpu_mem_unreserve(d, back);
    }
    return r;
}

VGPU_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    /* still mapped: the release frees nothing until the last cuMemUnmap */
    if (mem_on() && vgpu_vmm_release_deferred(h)) return REAL(cuMemRelease)(h);
    FREE_BODY(VGPU_KIND_VMM, h, REAL(cuMemRelease)(h));
}

/* ---- arrays: bytes from the format table, then what the driver says ---- */

/* Bytes of one row of w elements (of 4 pixel rows when block-compressed),
 * and how many such rows a plane of height h has; 0 for a format this table
 * does not know (then the widest element is charged until the driver's
 * answer corrects it). */
static uint64_t row_bytes(CUarray_format f, unsigned ch, uint64_t w, uint64_t h, uint64_t *rows)
{
    *rows = h;
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return w * ch;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return w * 2 * ch;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return w * 4 * ch;
    /* the channel count is part of these formats */
    case CU_AD_FORMAT_UNORM_INT8X1: case CU_AD_FORMAT_SNORM_INT8X1: return w;
    case CU_AD_FORMAT_UNORM_INT8X2: case CU_AD_FORMAT_SNORM_INT8X2: case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1: return w * 2;
    case CU_AD_FORMAT_UNORM_INT8X4: case CU_AD_FORMAT_SNORM_INT8X4: case CU_AD_FORMAT_UNORM_INT16X2:
    case CU_AD_FORMAT_SNORM_INT16X2: case CU_AD_FORMAT_UNORM_INT_101010_2: return w * 4;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4: return w * 8;
    /* block-compressed: 4x4 pixel blocks of 8 or 16 bytes */
    case CU_AD_FORMAT_BC1_UNORM: case CU_AD_FORMAT_BC1_UNORM_SRGB: case CU_AD_FORMAT_BC4_UNORM:
    case CU_AD_FORMAT_BC4_SNORM: *rows = (h + 3) / 4; return (w + 3) / 4 * 8;
    case CU_AD_FORMAT_BC2_UNORM: case CU_AD_FORMAT_BC2_UNORM_SRGB: case CU_AD_FORMAT_BC3_UNORM:
    case CU_AD_FORMAT_BC3_UNORM_SRGB: case CU_AD_FORMAT_BC5_UNORM: case CU_AD_FORMAT_BC5_SNORM:
    case CU_AD_FORMAT_BC6H_UF16: case CU_AD_FORMAT_BC6H_SF16: case CU_AD_FORMAT_BC7_UNORM:
    case CU_AD_FORMAT_BC7_UNORM_SRGB: *rows = (h + 3) / 4; return (w + 3) / 4 * 16;
    /* 4:2:0 semi-planar: luma plane plus a half-height chroma plane */
    case CU_AD_FORMAT_NV12: *rows = h + (h + 1) / 2; return w;
    case CU_AD_FORMAT_P010: case CU_AD_FORMAT_P016: *rows = h + (h + 1) / 2; return w * 2;
    /* 4:2:2 semi-planar: a full-height chroma plane */
    case CU_AD_FORMAT_NV16: *rows = 2 * h; return w;
    case CU_AD_FORMAT_P210: case CU_AD_FORMAT_P216: *rows = 2 * h; return w * 2;
    /* packed 4:2:2 and 4:4:4 */
    case CU_AD_FORMAT_YUY2: return w * 2;
    case CU_AD_FORMAT_Y210: case CU_AD_FORMAT_Y216: case CU_AD_FORMAT_AYUV: case CU_AD_FORMAT_Y410: return w * 4;
    case CU_AD_FORMAT_Y416: return w * 8;
    /* 4:4:4 planar or semi-planar: three full planes */
    case CU_AD_FORMAT_Y444_PLANAR8: case CU_AD_FORMAT_YUV444_8bit_SemiPlanar: *rows = 3 * h; return w;
    case CU_AD_FORMAT_Y444_PLANAR10: case CU_AD_FORMAT_YUV444_16bit_SemiPlanar: *rows = 3 * h; return w * 2;
    }
    return 0;
}

static uint64_t dim(size_t v) { return v ? v : 1; }

/* Rows are charged padded to 512 bytes, the texture pitch alignment. */
static uint64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch)
{
    uint64_t rows, rb = row_bytes(f, ch ? ch : 1, dim(w), dim(h), &rows);
    if (!rb) { rb = dim(w) * 16 * (ch ? ch : 1); rows = dim(h); }
    return (rb + 511) / 512 * 512 * rows * dim(d);
}

static uint64_t mipmap_bytes(const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned levels)
{
    uint64_t total = 0;
    size_t w = desc->Width, h = desc->Height, d = desc->Depth;
    int layered = desc->Flags & 0x05; /* CUDA_ARRAY3D_LAYERED, _CUBEMAP: depth counts layers */
    for (unsigned l = 0; l < (levels ? levels : 1); l++) {
        total += array_bytes(w, h, d, desc->Format, desc->NumChannels);
        w = w > 1 ? w / 2 : w; h = h > 1 ? h / 2 : h;
        if (!layered) d = d > 1 ? d / 2 : d;
    }
    return total;
}

/* After creation: charge what the driver says the array takes, where it
 * can tell. 0 = charged `*bytes` (corrected); -1 = the true size does not
 * fit the quota (the caller destroys the array). */
static int true_up(struct vgpu_dev *d, CUresult q, const CUDA_ARRAY_MEMORY_REQUIREMENTS *req, uint64_t *bytes)
{
    if (q != CUDA_SUCCESS || !req->size || req->size == *bytes) return 0;
    if (req->size < *bytes) {
        vgpu_mem_unreserve(d, *bytes - req->size);
    } else if (vgpu_mem_reserve(d, req->size - *bytes) != 0) {
        return -1;
    }
    *bytes = req->size;
    return 0;
}

static CUresult array_create(struct vgpu_dev *d, CUarray *a, uint64_t bytes, CUresult r)
{
    /* called with the estimate reserved and a table entry booked */
    if (r != CUDA_SUCCESS) { vgpu_mem_unbook(); vgpu_mem_unreserve(d, bytes); return r; }
    CUDA_ARRAY_MEMORY_REQUIREMENTS req = {0, 0, {0}};
    CUresult q = d->ordinal >= 0 ? REAL(cuArrayGetMemoryRequirements)(&req, *a, d->ordinal) : CUDA_ERROR_NOT_SUPPORTED;
    if (true_up(d, q, &req, &bytes) != 0) {
        REAL(cuArrayDestroy)(*a);
        vgpu_mem_unbook();
        vgpu_mem_unreserve(d, bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_mem_track(VGPU_KIND_ARRAY, (uintptr_t)*a, d, bytes);
    return CUDA_SUCCESS;
}

#define ARRAY_BODY(dev, bytes, create, finish)                             \
    do {                                                                  \
        struct vgpu_dev *d_ = (dev);                                      \
        uint64_t b_ = (bytes);                                            \
        if (!d_) return create;                                           \
        if (vgpu_mem_book() != 0) return CUDA_ERROR_OUT_OF_MEMORY;        \
        if (vgpu_mem_reserve(d_, b_) != 0) { vgpu_mem_unbook(); return CUDA_ERROR_OUT_OF_MEMORY; } \
        return finish(d_, a, b_, create);                                 \
    } while (0)

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    if (!mem_on() || !desc) return REAL(cuArrayCreate_v2)(a, desc);
    ARRAY_BODY(cur(), array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels),
               REAL(cuArrayCreate_v2)(a, desc), array_create);
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    if (!mem_on() || !desc) return REAL(cuArray3DCreate_v2)(a, desc);
    ARRAY_BODY(cur(), array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels),
               REAL(cuArray3DCreate_v2)(a, desc), array_create);
}

static CUresult mipmap_create(struct vgpu_dev *d, CUmipmappedArray *a, uint64_t bytes, CUresult r)
{
    if (r != CUDA_SUCCESS) { vgpu_mem_unbook(); vgpu_mem_unreserve(d, bytes); return r; }
    CUDA_ARRAY_MEMORY_REQUIREMENTS req = {0, 0, {0}};
    CUresult q = d->ordinal >= 0 ? REAL(cuMipmappedArrayGetMemoryRequirements)(&req, *a, d->ordinal)
                                 : CUDA_ERROR_NOT_SUPPORTED;
    if (true_up(d, q, &req, &bytes) != 0) {
        REAL(cuMipmappedArrayDestroy)(*a);
        vgpu_mem_unbook();
        vgpu_mem_unreserve(d, bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    vgpu_mem_track(VGPU_KIND_MIPMAP, (uintptr_t)*a, d, bytes);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned levels)
{
    if (!mem_on() || !desc) return REAL(cuMipmappedArrayCreate)(a, desc, levels);
    ARRAY_BODY(cur(), mipmap_bytes(desc, levels), REAL(cuMipmappedArrayCreate)(a, desc, levels), mipmap_create);
}

VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { FREE_BODY(VGPU_KIND_PTR, p, REAL(cuMemFree_v2)(p)); }
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
    vgpu_pools_sync(0); /* what pools released since we last looked */
    vgpu_deferred_frees_poll(); /* and stream-ordered frees that have run */
    vgpu_procmem_sync(d, 0); /* and driver memory no hook saw, if due */
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
    if (r == CUDA_SUCCESS && mem_on() && (d = limited(vgpu_dev_current()))) {
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
    if (r == CUDA_SUCCESS && bytes && mem_on() && (d = limited(vgpu_dev_by_ordinal(dev))))
        if (*bytes > d->mem_limit) *bytes = d->mem_limit;
    return r;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m)
{
    nvmlReturn_t r = REAL(nvmlDeviceGetMemoryInfo)(h, m);
    struct vgpu_dev *d;
    if (r == NVML_SUCCESS && m && mem_on() && (d = limited(vgpu_dev_by_nvml(h)))) {
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
    if (r == NVML_SUCCESS && m && mem_on() && (d = limited(vgpu_dev_by_nvml(h)))) {
        uint64_t t = m->total, f = m->free;
        quota_view(d, &t, &f);
        m->total = t; m->free = f; m->reserved = 0; m->used = t - f;
    }
    return r;
}
