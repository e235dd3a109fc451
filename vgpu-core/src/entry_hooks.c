/* cuInit and the cuGetProcAddress family: the runtime (CUDA 11.3+) fetches
 * every driver entry point through cuGetProcAddress, so each answer that is a
 * hooked function is swapped for the hook. */
#include "dispatch.h"
#include "devices.h"
#include "limiter.h"

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
