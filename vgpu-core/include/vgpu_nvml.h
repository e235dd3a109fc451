/* The subset of NVML that libvgpu and the fake NVML use (no NVIDIA headers). */
#ifndef VGPU_NVML_H
#define VGPU_NVML_H
#include <stdint.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_UNKNOWN = 999,
};
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24)))
/* Per-process samples and the process list (host PIDs, as the driver sees them). */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp; /* CPU time, microseconds since the epoch */
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

#define VGPU_NVML_PROTOS(X) \
X(nvmlReturn_t, nvmlInit_v2, (void)) \
X(nvmlReturn_t, nvmlShutdown, (void)) \
X(nvmlReturn_t, nvmlDeviceGetCount_v2, (unsigned int *n)) \
X(nvmlReturn_t, nvmlDeviceGetHandleByIndex_v2, (unsigned int i, nvmlDevice_t *d)) \
X(nvmlReturn_t, nvmlDeviceGetUUID, (nvmlDevice_t d, char *buf, unsigned int len)) \
X(nvmlReturn_t, nvmlDeviceGetMemoryInfo, (nvmlDevice_t d, nvmlMemory_t *m)) \
X(nvmlReturn_t, nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t d, nvmlMemory_v2_t *m)) \
X(nvmlReturn_t, nvmlDeviceGetHandleByUUID, (const char *uuid, nvmlDevice_t *d)) \
X(nvmlReturn_t, nvmlDeviceGetProcessUtilization, (nvmlDevice_t d, nvmlProcessUtilizationSample_t *u, unsigned int *count, unsigned long long lastSeen)) \
X(nvmlReturn_t, nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos))

#define VGPU_DECLARE_NVML(ret, name, args) ret name args;
#pragma GCC visibility push(default)
VGPU_NVML_PROTOS(VGPU_DECLARE_NVML)
#pragma GCC visibility pop
#endif
