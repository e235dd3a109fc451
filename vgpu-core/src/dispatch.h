/* Hook table and dispatch: the real driver entry points (loaded with dlopen
 * at first use), the table of hooked names, and the lookups used by the
 * dlsym and cuGetProcAddress interception. */
#ifndef VGPU_DISPATCH_H
#define VGPU_DISPATCH_H
#include "vgpu_cuda.h"
#include "vgpu_nvml.h"

#define VGPU_EXPORT __attribute__((visibility("default")))

/* X(name, hooked): every driver function libvgpu calls or hooks. */
#define VGPU_CUDA_FUNCS(X) \
X(cuInit, 1) X(cuGetProcAddress, 1) X(cuGetProcAddress_v2, 1) \
X(cuMemAlloc_v2, 1) X(cuMemAllocPitch_v2, 1) X(cuMemAllocManaged, 1) \
X(cuMemAllocAsync, 1) X(cuMemAllocAsync_ptsz, 1) \
X(cuMemAllocFromPoolAsync, 1) X(cuMemAllocFromPoolAsync_ptsz, 1) \
X(cuMemCreate, 1) X(cuArrayCreate_v2, 1) X(cuArray3DCreate_v2, 1) X(cuMipmappedArrayCreate, 1) \
X(cuMemFree_v2, 1) X(cuMemFreeAsync, 1) X(cuMemFreeAsync_ptsz, 1) X(cuMemRelease, 1) \
X(cuArrayDestroy, 1) X(cuMipmappedArrayDestroy, 1) \
X(cuMemGetInfo_v2, 1) X(cuDeviceTotalMem_v2, 1) \
X(cuLaunchKernel, 1) X(cuLaunchKernel_ptsz, 1) X(cuLaunchKernelEx, 1) X(cuLaunchKernelEx_ptsz, 1) \
X(cuLaunchCooperativeKernel, 1) X(cuLaunchCooperativeKernel_ptsz, 1) \
X(cuGraphLaunch, 1) X(cuGraphLaunch_ptsz, 1) \
X(cuDeviceGetCount, 0) X(cuDeviceGet, 0) X(cuDeviceGetUuid, 0) X(cuDeviceGetUuid_v2, 0) \
X(cuCtxGetDevice, 0) X(cuCtxGetCurrent, 0) X(cuCtxSetCurrent, 0) \
X(cuEventCreate, 0) X(cuEventDestroy_v2, 0) X(cuEventRecord, 0) X(cuEventQuery, 0) \
X(cuEventElapsedTime, 0) X(cuEventSynchronize, 0) X(cuStreamIsCapturing, 0) \
X(cuStreamDestroy_v2, 1) X(cuStreamDestroy, 1) X(cuCtxDestroy, 1) \
X(cuDevicePrimaryCtxReset_v2, 1) X(cuDevicePrimaryCtxReset, 1) X(cuDevicePrimaryCtxRelease, 1) \
X(cuStreamBeginCapture, 1) X(cuStreamBeginCapture_v2, 1) \
X(cuStreamBeginCapture_ptsz, 1) X(cuStreamBeginCapture_v2_ptsz, 1) \
X(cuThreadExchangeStreamCaptureMode, 0) X(cuDevicePrimaryCtxGetState, 0) \
X(cuCtxCreate_v2, 1) X(cuCtxDestroy_v2, 1) X(cuDevicePrimaryCtxRetain, 1) X(cuDevicePrimaryCtxRelease_v2, 1) \
X(cuCtxCreate_v3, 1) X(cuCtxCreate_v4, 1) \
X(cuModuleLoad, 1) X(cuModuleLoadData, 1) X(cuModuleLoadDataEx, 1) X(cuModuleLoadFatBinary, 1) X(cuModuleUnload, 1) \
X(cuLibraryLoadData, 1) X(cuLibraryLoadFromFile, 1) X(cuLibraryUnload, 1) \
X(cuModuleGetFunction, 1) X(cuDeviceGraphMemTrim, 1) \
X(cuMemPoolCreate, 1) X(cuMemPoolDestroy, 1) X(cuMemPoolTrimTo, 1) X(cuMemMap, 1) X(cuMemUnmap, 1) \
X(cuDeviceGetDefaultMemPool, 0) X(cuDeviceGetMemPool, 0) X(cuMemPoolGetAttribute, 0) \
X(cuArrayGetMemoryRequirements, 0) X(cuMipmappedArrayGetMemoryRequirements, 0)

#define VGPU_NVML_FUNCS(X) \
X(nvmlDeviceGetMemoryInfo, 1) X(nvmlDeviceGetMemoryInfo_v2, 1) \
X(nvmlDeviceGetUUID, 0) X(nvmlDeviceGetCount_v2, 0) X(nvmlDeviceGetHandleByIndex_v2, 0) \
X(nvmlDeviceGetHandleByUUID, 0) X(nvmlDeviceGetProcessUtilization, 0) \
X(nvmlDeviceGetComputeRunningProcesses_v3, 0) X(nvmlInit_v2, 0)

enum {
#define VGPU_ENUM(name, hooked) H_##name,
    VGPU_CUDA_FUNCS(VGPU_ENUM)
    H_CUDA_COUNT,
    H_NVML_BASE = H_CUDA_COUNT - 1,
    VGPU_NVML_FUNCS(VGPU_ENUM)
    H_COUNT
#undef VGPU_ENUM
};

extern void *vgpu_real_fn[H_COUNT];
void *vgpu_resolve(int h);

/* One predictable branch once resolved. */
static inline void *vgpu_real(int h)
{
    void *f = vgpu_real_fn[h];
    if (__builtin_expect(f == 0, 0)) f = vgpu_resolve(h);
    return f;
}
#define REAL(name) ((__typeof__(&name))vgpu_real(H_##name))

/* The hook for an exported driver symbol name, or NULL. */
void *vgpu_hook_for_name(const char *name);
/* cuGetProcAddress post-processing: swap a returned real pointer for our hook. */
void *vgpu_hook_for_proc(const char *sym, void *real_pfn, int cuda_version, cuuint64_t flags);
/* The real dlsym, bypassing our override. */
void *vgpu_real_dlsym(void *handle, const char *name);
#endif
