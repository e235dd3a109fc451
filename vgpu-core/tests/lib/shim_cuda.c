/* A forwarding libcuda.so.1, as WSL2's and some vendors' drivers are: every
 * entry point looks the real driver's function up with dlsym on the real
 * library (VT_SHIM_REAL) and calls it. libvgpu resolves "libcuda.so.1" to
 * this shim; its dlsym override must then hand the shim the real functions,
 * or hook -> shim -> hook recursion follows. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *real(const char *name)
{
    static void *h;
    if (!h) {
        const char *path = getenv("VT_SHIM_REAL");
        h = dlopen(path ? path : "", RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "shim: cannot load the real driver: %s\n", dlerror()); abort(); }
    }
    void *f = dlsym(h, name);
    if (!f) { fprintf(stderr, "shim: real driver lacks %s\n", name); abort(); }
    return f;
}
#define FWD(name, params, args) \
    CUresult name params { return ((CUresult(*) params)real(#name)) args; }

FWD(cuInit, (unsigned int f), (f))
FWD(cuDriverGetVersion, (int *v), (v))
FWD(cuDeviceGetCount, (int *n), (n))
FWD(cuDeviceGet, (CUdevice *d, int o), (d, o))
FWD(cuDeviceGetUuid, (CUuuid *u, CUdevice d), (u, d))
FWD(cuDeviceGetUuid_v2, (CUuuid *u, CUdevice d), (u, d))
FWD(cuDeviceTotalMem_v2, (size_t *b, CUdevice d), (b, d))
FWD(cuDevicePrimaryCtxRetain, (CUcontext *c, CUdevice d), (c, d))
FWD(cuDevicePrimaryCtxRelease_v2, (CUdevice d), (d))
FWD(cuCtxCreate_v2, (CUcontext *c, unsigned f, CUdevice d), (c, f, d))
FWD(cuCtxSetCurrent, (CUcontext c), (c))
FWD(cuCtxGetCurrent, (CUcontext *c), (c))
FWD(cuCtxGetDevice, (CUdevice *d), (d))
FWD(cuMemAlloc_v2, (CUdeviceptr *p, size_t n), (p, n))
FWD(cuMemFree_v2, (CUdeviceptr p), (p))
FWD(cuMemGetInfo_v2, (size_t *f, size_t *t), (f, t))
