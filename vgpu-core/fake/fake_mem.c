/* The fake driver's device memory: allocations of every kind take physical
 * memory of the simulated GPU (fake_gpu.c), shared by all processes, and
 * fail with CUDA_ERROR_OUT_OF_MEMORY when it is exhausted, as the real
 * driver does. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "fake_gpu.h"
#include "fake_mem.h"
#include <stdlib.h>

#define OBJ_MAGIC 0xa110ca7eu
struct fobj { uint32_t magic; int dev; uint64_t size; };

static CUresult alloc_on(int d, uint64_t n, uint64_t *out)
{
    int h = fk_host(d);
    if (h < 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (n == 0) return CUDA_ERROR_INVALID_VALUE;
    if (fg_phys_alloc(h, n)) return CUDA_ERROR_OUT_OF_MEMORY;
    struct fobj *o = malloc(sizeof *o);
    o->magic = OBJ_MAGIC; o->dev = h; o->size = n;
    *out = (uint64_t)(uintptr_t)o;
    return CUDA_SUCCESS;
}
static CUresult alloc_cur(uint64_t n, uint64_t *out)
{
    int d = fk_current_dev();
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    return alloc_on(d, n, out);
}
static CUresult free_obj(uint64_t p)
{
    struct fobj *o = (struct fobj *)(uintptr_t)p;
    if (!o || o->magic != OBJ_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    o->magic = 0;
    fg_phys_free(o->dev, o->size);
    free(o);
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { return alloc_cur(n, p); }
CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned esz)
{
    (void)esz;
    *pitch = (w + 511) & ~(size_t)511;
    return alloc_cur(*pitch * h, p);
}
CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned f) { (void)f; return alloc_cur(n, p); }
CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) { (void)s; return alloc_cur(n, p); }
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s) { (void)s; return alloc_cur(n, p); }
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, CUmemoryPool pl, CUstream s) { (void)pl; (void)s; return alloc_cur(n, p); }
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, CUmemoryPool pl, CUstream s) { (void)pl; (void)s; return alloc_cur(n, p); }
CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long f)
{
    (void)f;
    if (!prop || prop->location.type != 1) return CUDA_ERROR_INVALID_VALUE;
    return alloc_on(prop->location.id, n, h);
}
static uint64_t esize(CUarray_format f) { return f == CU_AD_FORMAT_FLOAT || f == CU_AD_FORMAT_UNSIGNED_INT32 || f == CU_AD_FORMAT_SIGNED_INT32 ? 4 : f == CU_AD_FORMAT_HALF || f == CU_AD_FORMAT_UNSIGNED_INT16 || f == CU_AD_FORMAT_SIGNED_INT16 ? 2 : 1; }
static uint64_t d1(size_t v) { return v ? v : 1; }
CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d)
{
    uint64_t o;
    CUresult r = alloc_cur(d1(d->Width) * d1(d->Height) * esize(d->Format) * d->NumChannels, &o);
    if (!r) *a = (CUarray)(uintptr_t)o;
    return r;
}
CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    uint64_t o;
    CUresult r = alloc_cur(d1(d->Width) * d1(d->Height) * d1(d->Depth) * esize(d->Format) * d->NumChannels, &o);
    if (!r) *a = (CUarray)(uintptr_t)o;
    return r;
}
CUresult cuMipmappedArrayCreate(CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    uint64_t o, tot = 0, w = d->Width, h = d->Height, z = d->Depth;
    for (unsigned l = 0; l < (levels ? levels : 1); l++) {
        tot += d1(w) * d1(h) * d1(z) * esize(d->Format) * d->NumChannels;
        w = w > 1 ? w / 2 : w; h = h > 1 ? h / 2 : h; z = z > 1 ? z / 2 : z;
    }
    CUresult r = alloc_cur(tot, &o);
    if (!r) *a = (CUmipmappedArray)(uintptr_t)o;
    return r;
}
CUresult cuMemFree_v2(CUdeviceptr p) { return free_obj(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)s; return free_obj(p); }
CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { (void)s; return free_obj(p); }
CUresult cuMemRelease(CUmemGenericAllocationHandle h) { return free_obj(h); }
CUresult cuArrayDestroy(CUarray a) { return free_obj((uintptr_t)a); }
CUresult cuMipmappedArrayDestroy(CUmipmappedArray a) { return free_obj((uintptr_t)a); }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t)
{
    int d = fk_current_dev();
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    int h = fk_host(d);
    uint64_t used = __atomic_load_n(&fg_dev(h)->phys_used, __ATOMIC_SEQ_CST);
    *t = fg.dev[h].mem;
    *f = used < fg.dev[h].mem ? fg.dev[h].mem - used : 0;
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned f) { (void)f; *p = malloc(n); return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY; }
CUresult cuMemFreeHost(void *p) { free(p); return CUDA_SUCCESS; }

