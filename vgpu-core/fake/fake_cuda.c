/* A fake libcuda.so.1 for tests without a GPU: devices and contexts here,
 * memory with physical limits shared across processes in fake_mem.c and
 * fake_gpu.c, and the simulated execution engine (kernels, streams, events,
 * capture: fake_exec.c on fake_gpu.c's engine). */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "fake_gpu.h"
#include "fake_mem.h"
#include "fake_exec.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

static struct CUctx_st primary[FG_MAX_DEV];
static int primary_refs[FG_MAX_DEV];
static __thread CUcontext current;
static int inited;

#define EXPORT __attribute__((visibility("default")))

CUresult cuInit(unsigned int flags) { (void)flags; fg_init(); inited = 1; return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int *n) { if (!inited) return CUDA_ERROR_NOT_INITIALIZED; *n = fg.nvis; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice *d, int o)
{
    if (!inited) return CUDA_ERROR_NOT_INITIALIZED;
    if (o < 0 || o >= fg.nvis) return CUDA_ERROR_INVALID_DEVICE;
    *d = o;
    return CUDA_SUCCESS;
}
int fk_host(CUdevice d) { return (d >= 0 && d < fg.nvis) ? fg.vis[d] : -1; }
static int host(CUdevice d) { return fk_host(d); }
int fk_current_dev(void) { return current && !fx_ctx_check(current) ? current->dev : -1; }
CUcontext fk_ctx(void) { return current; }
int fk_initialized(void) { return inited; }

CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d)
{
    int h = host(d);
    if (h < 0) return CUDA_ERROR_INVALID_DEVICE;
    const char *s = fg.dev[h].uuid + 4; /* skip "GPU-" */
    int n = 0;
    while (*s && n < 16) {
        if (*s == '-') { s++; continue; }
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1) break;
        u->bytes[n++] = (char)v;
        s += 2;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return cuDeviceGetUuid(u, d); }
CUresult cuDeviceGetPCIBusId(char *buf, int len, CUdevice d)
{
    int h = host(d);
    if (h < 0) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(buf, (size_t)len, "%s", fg.dev[h].pci);
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d)
{
    int h = host(d);
    if (h < 0) return CUDA_ERROR_INVALID_DEVICE;
    *b = fg.dev[h].mem;
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate_v2(CUcontext *c, unsigned flags, CUdevice d)
{
    (void)flags;
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    CUresult mr = fm_ctx_acquire(d); /* a context takes device memory */
    if (mr != CUDA_SUCCESS) return mr;
    struct CUctx_st *x = calloc(1, sizeof *x);
    if (!x) { fm_ctx_release(d); return CUDA_ERROR_OUT_OF_MEMORY; }
    fx_ctx_init(x, d);
    *c = current = x;
    return CUDA_SUCCESS;
}
/* The newer entry points create the same context (the affinity and
 * create parameters do not change what it takes). */
CUresult cuCtxCreate_v3(CUcontext *c, CUexecAffinityParam *params, int nparams, unsigned flags, CUdevice d)
{
    (void)params, (void)nparams;
    return cuCtxCreate_v2(c, flags, d);
}
CUresult cuCtxCreate_v4(CUcontext *c, CUctxCreateParams *params, unsigned flags, CUdevice d)
{
    (void)params;
    return cuCtxCreate_v2(c, flags, d);
}
CUresult cuCtxDestroy_v2(CUcontext c)
{
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = fx_ctx_check(c); /* a destroyed one: refused (and freed memory, for ASan) */
    if (r) return r;
    for (int i = 0; i < FG_MAX_DEV; i++)
        if (c == &primary[i]) return CUDA_ERROR_INVALID_CONTEXT; /* the primary context is released, not destroyed */
    fm_ctx_release(c->dev);
    fx_ctx_teardown(c); /* with every stream and event of it */
    if (current == c) current = NULL;
    free(c);
    return CUDA_SUCCESS;
}
CUresult cuCtxDestroy(CUcontext c) { return cuCtxDestroy_v2(c); }
CUresult cuCtxSetCurrent(CUcontext c)
{
    CUresult r = c ? fx_ctx_check(c) : CUDA_SUCCESS;
    if (r) return r;
    current = c;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext *c) { *c = current; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d)
{
    CUresult r = fx_ctx_check(current);
    if (r) return r;
    *d = current->dev;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d)
{
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (primary_refs[d] == 0) {
        CUresult mr = fm_ctx_acquire(d); /* the primary context is created at its first retain */
        if (mr != CUDA_SUCCESS) return mr;
    }
    if (primary_refs[d]++ == 0) fx_ctx_init(&primary[d], d);
    *c = &primary[d];
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (primary_refs[d] == 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (--primary_refs[d] == 0) { /* destroyed at its last release */
        fm_ctx_release(d);
        fx_ctx_teardown(&primary[d]);
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return cuDevicePrimaryCtxRelease_v2(d); }
/* Destroys every stream and event (and allocation) of the primary context;
 * it stays retained and starts afresh. */
CUresult cuDevicePrimaryCtxReset_v2(CUdevice d)
{
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (primary_refs[d] == 0) return CUDA_SUCCESS;
    fx_ctx_teardown(&primary[d]);
    fx_ctx_init(&primary[d], d);
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxReset(CUdevice d) { return cuDevicePrimaryCtxReset_v2(d); }
CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned int *flags, int *active)
{
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (flags) *flags = 0;
    if (active) *active = primary_refs[d] > 0;
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress ---- */
#define FK_ENTRY(ret, name, args) {#name, (void *)&name},
static const struct { const char *name; void *fn; } table[] = {
    VGPU_CUDA_PROTOS(FK_ENTRY) VGPU_CUDA_MEM_PROTOS(FK_ENTRY) VGPU_CUDA_EXEC_PROTOS(FK_ENTRY)
};

/* FAKE_PROCADDR_INTERNAL=1: hand out internal addresses, as a real driver
 * may, so libvgpu must map by name and version. */
static CUresult internal_memalloc(CUdeviceptr *p, size_t n) { return cuMemAlloc_v2(p, n); }
static CUresult internal_meminfo(size_t *f, size_t *t) { return cuMemGetInfo_v2(f, t); }
static CUresult internal_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                unsigned bz, unsigned shm, CUstream s, void **params, void **extra)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}

static void *lookup(const char *name)
{
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name)) return table[i].fn;
    return NULL;
}

static CUresult procaddr(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    static const char *v2[] = {"cuMemAlloc", "cuMemAllocPitch", "cuMemFree", "cuMemGetInfo", "cuDeviceTotalMem",
                               "cuArrayCreate", "cuArray3DCreate", "cuCtxDestroy", "cuStreamDestroy",
                               "cuEventDestroy", "cuDevicePrimaryCtxRelease", "cuCtxCreate"};
    char name[128];
    snprintf(name, sizeof name, "%s", sym);
    for (unsigned i = 0; i < sizeof v2 / sizeof v2[0]; i++)
        if (!strcmp(sym, v2[i]) && ver >= 3020) snprintf(name, sizeof name, "%s_v2", sym);
    if (!strcmp(sym, "cuGetProcAddress") && ver >= 12000) snprintf(name, sizeof name, "cuGetProcAddress_v2");
    if (!strcmp(sym, "cuDeviceGetUuid") && ver >= 11040) snprintf(name, sizeof name, "cuDeviceGetUuid_v2");
    /* as the driver: callers built for CUDA 11.4+ get _v3, for 12.5+ _v4 */
    if (!strcmp(sym, "cuCtxCreate") && ver >= 11040) snprintf(name, sizeof name, ver >= 12050 ? "cuCtxCreate_v4" : "cuCtxCreate_v3");
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        char pt[140];
        snprintf(pt, sizeof pt, "%s_ptsz", name);
        if (lookup(pt)) snprintf(name, sizeof name, "%.120s", pt);
    }
    void *f = lookup(name);
    const char *internal = getenv("FAKE_PROCADDR_INTERNAL");
    if (internal && *internal == '1') {
        if (!strcmp(name, "cuMemAlloc_v2")) f = (void *)&internal_memalloc;
        if (!strcmp(name, "cuMemGetInfo_v2")) f = (void *)&internal_meminfo;
        if (!strcmp(name, "cuLaunchKernel")) f = (void *)&internal_launch;
    }
    *pfn = f;
    return f ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) { return procaddr(sym, pfn, ver, flags); }
CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st)
{
    CUresult r = procaddr(sym, pfn, ver, flags);
    if (st) *st = r == CUDA_SUCCESS ? 0 : 1;
    return r;
}
