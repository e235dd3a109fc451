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

#define VGPU_NVML_PROTOS(X) \
X(nvmlReturn_t, nvmlInit_v2, (void)) \
X(nvmlReturn_t, nvmlShutdown, (void)) \
X(nvmlReturn_t, nvmlDeviceGetCount_v2, (unsigned int *n)) \
X(nvmlReturn_t, nvmlDeviceGetHandleByIndex_v2, (unsigned int i, nvmlDevice_t *d)) \
X(nvmlReturn_t, nvmlDeviceGetUUID, (nvmlDevice_t d, char *buf, unsigned int len)) \
X(nvmlReturn_t, nvmlDeviceGetMemoryInfo, (nvmlDevice_t d, nvmlMemory_t *m)) \
X(nvmlReturn_t, nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t d, nvmlMemory_v2_t *m))

#define VGPU_DECLARE_NVML(ret, name, args) ret name args;
#pragma GCC visibility push(default)
VGPU_NVML_PROTOS(VGPU_DECLARE_NVML)
#pragma GCC visibility pop
#endif
