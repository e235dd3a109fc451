/* A fake libcuda.so.1 for tests without a GPU: devices, contexts, memory
 * with physical limits shared across processes (fake_gpu.c), and a simulated
 * execution engine: kernels take the time the test gives them and run one at
 * a time on a device timeline shared by every process; events and
 * synchronisation report on that timeline.
 * Kernel time: a function named "sleep_ns" runs for *(uint64_t *)params[0]
 * ns; other functions run FAKE_KERNEL_NS. A CUgraphExec handle is a pointer
 * to a uint64_t duration (tests only). */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "fake_gpu.h"
#include "fake_mem.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

#define QUEUE_DEPTH 128 /* launches a stream holds before cuLaunchKernel blocks, like a full push buffer */
struct CUstream_st { int dev; uint64_t last_end; uint64_t ends[QUEUE_DEPTH]; unsigned next; };
struct CUctx_st { int dev; struct CUstream_st def; };
struct CUevent_st { uint64_t t; int recorded; };
struct CUfunc_st { int timed; };
static struct CUctx_st primary[FG_MAX_DEV];
static int primary_refs[FG_MAX_DEV];
static __thread CUcontext current;
static int inited;
static struct CUfunc_st timed_fn = {1}, plain_fn = {0};

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
int fk_current_dev(void) { return current ? current->dev : -1; }
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
    x->dev = d;
    x->def.dev = d;
    *c = current = x;
    return CUDA_SUCCESS;
}
CUresult cuCtxDestroy_v2(CUcontext c)
{
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    fm_ctx_release(c->dev);
    if (current == c) current = NULL;
    free(c);
    return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext c) { current = c; return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext *c) { *c = current; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d)
{
    if (!current) return CUDA_ERROR_INVALID_CONTEXT;
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
    primary_refs[d]++;
    primary[d].dev = d;
    primary[d].def.dev = d;
    *c = &primary[d];
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
    if (host(d) < 0) return CUDA_ERROR_INVALID_DEVICE;
    if (primary_refs[d] == 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (--primary_refs[d] == 0) fm_ctx_release(d); /* destroyed at its last release */
    return CUDA_SUCCESS;
}

/* ---- execution ---- */
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
    (void)m;
    *f = !strcmp(name, "sleep_ns") ? &timed_fn : &plain_fn;
    return CUDA_SUCCESS;
}
static struct CUstream_st *strm(CUstream s)
{
    if (s && s != (CUstream)1 && s != (CUstream)2) return s; /* 1, 2: legacy / per-thread handles */
    return current ? &current->def : NULL;
}
int fk_stream(CUstream s, int *dev, uint64_t *done_at)
{
    struct CUstream_st *st = strm(s);
    if (!st) return -1;
    *dev = st->dev;
    *done_at = st->last_end;
    return 0;
}
static CUresult launch(CUstream s, uint64_t dur)
{
    struct CUstream_st *st = strm(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    __atomic_add_fetch(&fg_dev(host(st->dev))->launches, 1, __ATOMIC_RELAXED);
    if (!dur) return CUDA_SUCCESS;
    /* the slot QUEUE_DEPTH launches back must have completed */
    unsigned slot = st->next++ % QUEUE_DEPTH;
    if (st->ends[slot] > fg_now()) fg_sleep_until(st->ends[slot]);
    st->last_end = fg_run(host(st->dev), st->last_end, dur);
    st->ends[slot] = st->last_end;
    return CUDA_SUCCESS;
}
static uint64_t kdur(CUfunction f, void **params)
{
    if (f && f->timed && params && params[0]) return *(uint64_t *)params[0];
    return fg.kernel_ns;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shm, CUstream s, void **params, void **extra)
{
    (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)extra;
    return launch(s, kdur(f, params));
}
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                             unsigned bz, unsigned shm, CUstream s, void **params, void **extra)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)extra;
    return launch(c ? c->hStream : NULL, kdur(f, params));
}
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    return cuLaunchKernelEx(c, f, params, extra);
}
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shm, CUstream s, void **params)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, NULL);
}
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                        unsigned by, unsigned bz, unsigned shm, CUstream s, void **params)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, NULL);
}
CUresult cuGraphLaunch(CUgraphExec g, CUstream s) { return launch(s, g ? *(uint64_t *)g : 0); }
CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s) { return cuGraphLaunch(g, s); }

CUresult cuStreamCreate(CUstream *s, unsigned flags)
{
    (void)flags;
    if (!current) return CUDA_ERROR_INVALID_CONTEXT;
    struct CUstream_st *x = calloc(1, sizeof *x);
    x->dev = current->dev;
    *s = x;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(CUstream s) { free(s); return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream s)
{
    struct CUstream_st *st = strm(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    fg_sleep_until(st->last_end);
    fm_on_sync();
    return CUDA_SUCCESS;
}
CUresult cuStreamIsCapturing(CUstream s, int *status) { (void)s; *status = 0; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize(void) { return cuStreamSynchronize(NULL); }
CUresult cuEventCreate(CUevent *e, unsigned flags) { (void)flags; *e = calloc(1, sizeof **e); return CUDA_SUCCESS; }
CUresult cuEventDestroy_v2(CUevent e) { free(e); return CUDA_SUCCESS; }
CUresult cuEventRecord(CUevent e, CUstream s)
{
    struct CUstream_st *st = strm(s);
    if (!st || !e) return CUDA_ERROR_INVALID_HANDLE;
    /* the event is a zero-length item at the end of the device's queue: it
     * completes when everything submitted before it (by any process) has
     * run, as when a time-sliced GPU next switches to this context */
    uint64_t now = fg_now(), tail = __atomic_load_n(&fg_dev(host(st->dev))->tail_ns, __ATOMIC_SEQ_CST);
    uint64_t t = st->last_end > now ? st->last_end : now;
    e->t = tail > t ? tail : t;
    e->recorded = 1;
    return CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent e) { return fg_now() >= e->t ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY; }
CUresult cuEventSynchronize(CUevent e) { fg_sleep_until(e->t); fm_on_sync(); return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b)
{
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    if (fg_now() < a->t || fg_now() < b->t) return CUDA_ERROR_NOT_READY;
    *ms = (float)((double)((int64_t)(b->t - a->t)) / 1e6);
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress ---- */
#define FK_ENTRY(ret, name, args) {#name, (void *)&name},
static const struct { const char *name; void *fn; } table[] = { VGPU_CUDA_PROTOS(FK_ENTRY) VGPU_CUDA_MEM_PROTOS(FK_ENTRY) };

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
