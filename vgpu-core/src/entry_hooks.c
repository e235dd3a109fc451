/* cuInit and the cuGetProcAddress family: the runtime (CUDA 11.3+) fetches
 * every driver entry point through cuGetProcAddress, so each answer that is a
 * hooked function is swapped for the hook. */
#include "dispatch.h"
#include "devices.h"
#include "limiter.h"
#include "memacct.h"

VGPU_EXPORT CUresult cuInit(unsigned int flags)
{
    CUresult r = REAL(cuInit)(flags);
    if (r == CUDA_SUCCESS && (vgpu_cfg.mem_any || vgpu_cfg.sm_any)) {
        vgpu_devices_after_init();
        vgpu_lim_after_init();
    }
    return r;
}

VGPU_EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    CUresult r = REAL(cuGetProcAddress)(sym, pfn, ver, flags);
    if (r == CUDA_SUCCESS && pfn) *pfn = vgpu_hook_for_proc(sym, *pfn, ver, flags);
    return r;
}

VGPU_EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *st)
{
    CUresult r = REAL(cuGetProcAddress_v2)(sym, pfn, ver, flags, st);
    if (r == CUDA_SUCCESS && pfn) *pfn = vgpu_hook_for_proc(sym, *pfn, ver, flags);
    return r;
}

/* Handle lifetimes and stream capture: the compute limiter must forget what
 * is destroyed and never record into a capture (limiter.c). cuCtxDestroy_v2
 * and cuDevicePrimaryCtxRelease_v2 are hooked in drvmem.c (the memory the
 * context took), which calls the limiter's part. */
VGPU_EXPORT CUresult cuStreamDestroy_v2(CUstream s)
{
    if (vgpu_lim_active) vgpu_lim_stream_destroy(s);
    return REAL(cuStreamDestroy_v2)(s);
}
VGPU_EXPORT CUresult cuStreamDestroy(CUstream s)
{
    if (vgpu_lim_active) vgpu_lim_stream_destroy(s);
    return REAL(cuStreamDestroy)(s);
}
VGPU_EXPORT CUresult cuCtxDestroy(CUcontext c) { return cuCtxDestroy_v2(c); }
VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return cuDevicePrimaryCtxRelease_v2(d); }
VGPU_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice d)
{
    CUresult r = vgpu_lim_primary_reset(d);
    if (r == CUDA_SUCCESS) vgpu_drvmem_primary_reset(d);
    return r;
}
VGPU_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice d) { return cuDevicePrimaryCtxReset_v2(d); }

VGPU_EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, int mode)
{
    vgpu_lim_capture_begin(s);
    return REAL(cuStreamBeginCapture_v2)(s, mode);
}
VGPU_EXPORT CUresult cuStreamBeginCapture(CUstream s)
{
    vgpu_lim_capture_begin(s);
    return REAL(cuStreamBeginCapture)(s);
}
VGPU_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream s)
{
    vgpu_lim_capture_begin(s);
    return REAL(cuStreamBeginCapture_ptsz)(s);
}
VGPU_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, int mode)
{
    vgpu_lim_capture_begin(s);
    return REAL(cuStreamBeginCapture_v2_ptsz)(s, mode);
}
