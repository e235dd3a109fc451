/* quota: a small CUDA workload for the end-to-end tests and the demo. It is
 * what a user's program does, seen from the driver API: it reports the memory
 * every visible device claims to have (cuMemGetInfo, cuDeviceTotalMem, NVML),
 * then allocates the given sizes one after another on device 0, keeping each,
 * and prints what the driver answered. Run under libvgpu in a pod, the output
 * shows the claim's quota as the device's memory and an out-of-memory error
 * once the allocations pass it.
 *
 *   quota [--hold] MiB...   e.g. quota 10240 10240 1
 *
 * --hold keeps the allocations and waits to be killed after printing
 * "holding" (for tests that look at the claim's usage from outside).
 *
 * Output, one fact per line (the e2e tests parse it):
 *   device <ordinal> uuid=<GPU-...> total_mib=<n> free_mib=<n> device_total_mib=<n>
 *   nvml <index> total_mib=<n> free_mib=<n>
 *   alloc <n> MiB: CUDA_SUCCESS | CUDA_ERROR_OUT_OF_MEMORY | error <code>
 *   free after allocations: <n> MiB
 * It exits 0 when every call answered (an out-of-memory answer included),
 * 1 when the driver could not be used at all. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "vgpu_nvml.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB (1ull << 20)

static void uuid_string(const CUuuid *u, char *out, size_t n)
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int main(int argc, char **argv)
{
    int hold = argc > 1 && !strcmp(argv[1], "--hold");
    if (hold) {
        argv++;
        argc--;
    }
    CUresult r = cuInit(0);
    int count = 0;
    if (r == CUDA_SUCCESS) r = cuDeviceGetCount(&count);
    if (r != CUDA_SUCCESS || count == 0) {
        printf("no usable CUDA device (cuInit/cuDeviceGetCount: %d, %d devices)\n", (int)r, count);
        return 1;
    }
    CUcontext ctx0 = NULL;
    for (int i = 0; i < count; i++) {
        CUdevice d;
        CUcontext c;
        CUuuid u;
        char uuid[64] = "?";
        size_t free_b = 0, total_b = 0, dev_total = 0;
        cuDeviceGet(&d, i);
        if (cuDeviceGetUuid(&u, d) == CUDA_SUCCESS) uuid_string(&u, uuid, sizeof uuid);
        cuCtxCreate_v2(&c, 0, d);
        cuMemGetInfo_v2(&free_b, &total_b);
        cuDeviceTotalMem_v2(&dev_total, d);
        printf("device %d uuid=%s total_mib=%zu free_mib=%zu device_total_mib=%zu\n", i, uuid, total_b >> 20,
               free_b >> 20, dev_total >> 20);
        if (i == 0) ctx0 = c;
    }
    if (nvmlInit_v2() == NVML_SUCCESS) {
        unsigned n = 0;
        nvmlDeviceGetCount_v2(&n);
        for (unsigned i = 0; i < n; i++) {
            nvmlDevice_t h;
            nvmlMemory_t m;
            if (nvmlDeviceGetHandleByIndex_v2(i, &h) == NVML_SUCCESS && nvmlDeviceGetMemoryInfo(h, &m) == NVML_SUCCESS)
                printf("nvml %u total_mib=%llu free_mib=%llu\n", i, (unsigned long long)(m.total / MiB),
                       (unsigned long long)(m.free / MiB));
        }
    }
    cuCtxSetCurrent(ctx0);
    for (int a = 1; a < argc; a++) {
        unsigned long long mib = strtoull(argv[a], NULL, 10);
        CUdeviceptr p;
        r = cuMemAlloc_v2(&p, mib * MiB);
        if (r == CUDA_SUCCESS)
            printf("alloc %llu MiB: CUDA_SUCCESS\n", mib);
        else if (r == CUDA_ERROR_OUT_OF_MEMORY)
            printf("alloc %llu MiB: CUDA_ERROR_OUT_OF_MEMORY\n", mib);
        else
            printf("alloc %llu MiB: error %d\n", mib, (int)r);
    }
    size_t free_b = 0, total_b = 0;
    cuMemGetInfo_v2(&free_b, &total_b);
    printf("free after allocations: %zu MiB\n", free_b >> 20);
    if (hold) {
        printf("holding\n");
        fflush(stdout);
        for (;;) pause();
    }
    fflush(stdout);
    return 0;
}
