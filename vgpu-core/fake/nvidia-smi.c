/* A simulated nvidia-smi for the local cluster's simulated GPUs. It reads
 * what the real one reads for its default table (device count, name, UUID,
 * PCI bus ID, memory info from NVML) through the fake libnvidia-ml.so.1, so
 * that, run under libvgpu in a pod, it shows the claim's quota as the GPU's
 * memory, as the real nvidia-smi does on a real node. It prints a compact
 * table, not the real tool's exact layout, and says that it is simulated. */
#include "vgpu_nvml.h"
#include <stdio.h>

/* Not hooked by libvgpu, so not in vgpu_nvml.h's list. */
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *buf, unsigned len);
nvmlReturn_t nvmlDeviceGetPciBusId(nvmlDevice_t d, char *buf, unsigned len);
nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned len);

int main(void)
{
    if (nvmlInit_v2() != NVML_SUCCESS) {
        fprintf(stderr, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n");
        return 9;
    }
    char driver[32] = "?";
    nvmlSystemGetDriverVersion(driver, sizeof driver);
    unsigned n = 0;
    nvmlDeviceGetCount_v2(&n);
    printf("NVIDIA-SMI (simulated GPUs of the hami-dra local cluster)   Driver Version: %s\n", driver);
    printf("%-3s %-26s %-40s %-16s %s\n", "GPU", "Name", "UUID", "Bus-Id", "Memory-Usage");
    for (unsigned i = 0; i < n; i++) {
        nvmlDevice_t d;
        char name[96] = "?", uuid[96] = "?", bus[32] = "?";
        nvmlMemory_t m = {0, 0, 0};
        if (nvmlDeviceGetHandleByIndex_v2(i, &d) != NVML_SUCCESS) continue;
        nvmlDeviceGetName(d, name, sizeof name);
        nvmlDeviceGetUUID(d, uuid, sizeof uuid);
        nvmlDeviceGetPciBusId(d, bus, sizeof bus);
        nvmlDeviceGetMemoryInfo(d, &m);
        printf("%-3u %-26s %-40s %-16s %lluMiB / %lluMiB\n", i, name, uuid, bus, m.used >> 20, m.total >> 20);
    }
    nvmlShutdown();
    return 0;
}
