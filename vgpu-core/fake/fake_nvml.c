/* A fake libnvidia-ml.so.1 over the same simulated devices (host order,
 * CUDA_VISIBLE_DEVICES ignored, as in NVML). */
#include "vgpu_nvml.h"
#include "fake_gpu.h"
#include <stdio.h>
#include <string.h>

struct nvmlDevice_st { int idx; };
static struct nvmlDevice_st devs[FG_MAX_DEV];

nvmlReturn_t nvmlInit_v2(void) { fg_init(); return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) { fg_init(); *n = (unsigned)fg.ndev; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *d)
{
    fg_init();
    if (i >= (unsigned)fg.ndev) return NVML_ERROR_INVALID_ARGUMENT;
    devs[i].idx = (int)i;
    *d = &devs[i];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *buf, unsigned len)
{
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(fg.dev[d->idx].uuid) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(buf, len, "%s", fg.dev[d->idx].uuid);
    return NVML_SUCCESS;
}
static void info(nvmlDevice_t d, unsigned long long *t, unsigned long long *f, unsigned long long *u)
{
    uint64_t used = __atomic_load_n(&fg_dev(d->idx)->phys_used, __ATOMIC_SEQ_CST);
    *t = fg.dev[d->idx].mem;
    *u = used;
    *f = used < *t ? *t - used : 0;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    if (!d || !m) return NVML_ERROR_INVALID_ARGUMENT;
    info(d, &m->total, &m->free, &m->used);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    if (!d || !m) return NVML_ERROR_INVALID_ARGUMENT;
    info(d, &m->total, &m->free, &m->used);
    m->reserved = 0;
    return NVML_SUCCESS;
}

/* For the simulated nvidia-smi (fake/nvidia-smi.c); libvgpu does not hook these. */
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *buf, unsigned len)
{
    if (!d || !buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(fg.dev[d->idx].name) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(buf, len, "%s", fg.dev[d->idx].name);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPciBusId(nvmlDevice_t d, char *buf, unsigned len)
{
    if (!d || !buf) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(buf, len, "%s", fg.dev[d->idx].pci);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned len)
{
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(buf, len, "580.82.07");
    return NVML_SUCCESS;
}
