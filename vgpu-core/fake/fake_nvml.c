/* A fake libnvidia-ml.so.1 over the same simulated devices (host order,
 * CUDA_VISIBLE_DEVICES ignored, as in NVML). */
#include "vgpu_nvml.h"
#include "fake_gpu.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *d)
{
    fg_init();
    if (!uuid || !d) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < fg.ndev; i++)
        if (!strcmp(fg.dev[i].uuid, uuid)) return nvmlDeviceGetHandleByIndex_v2((unsigned)i, d);
    return NVML_ERROR_NOT_FOUND;
}

/* Per-process utilisation as the driver samples it: the time is cut into
 * sample periods (FAKE_NVML_SAMPLE_US, default 1/6 s); for each completed
 * period and each process (host PID) that ran kernels in it, one sample
 * with the period's end as timeStamp (CPU clock, microseconds) and smUtil =
 * percent of the period during which a kernel of the process was running.
 * Samples newer than lastSeen are returned (0: everything buffered, the
 * last SAMPLE_BUF periods). */
#define SAMPLE_BUF 10
#define MAX_PIDS 64
static uint64_t period_ns(void)
{
    const char *v = getenv("FAKE_NVML_SAMPLE_US");
    uint64_t us = v ? strtoull(v, NULL, 10) : 0;
    return (us ? us : 166667) * 1000;
}
static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *u, unsigned int *count,
                                             unsigned long long lastSeen)
{
    if (!d || !count) return NVML_ERROR_INVALID_ARGUMENT;
    fg_engine_sync(d->idx);
    struct fg_state *st = fg_state();
    /* the offset between the clocks, read once: timestamps of one period must
     * not move between calls */
    static uint64_t to_real;
    uint64_t P = period_ns(), now = fg_now();
    if (!to_real) to_real = realtime_ns() - now;
    uint64_t last = now / P; /* periods [k P, (k+1) P) with k < last are complete */
    uint64_t first = last > SAMPLE_BUF ? last - SAMPLE_BUF : 0;
    while (first < last && ((first + 1) * P + to_real) / 1000 <= lastSeen) first++;
    unsigned pids[MAX_PIDS], np = 0;
    static __thread uint64_t busy[MAX_PIDS][SAMPLE_BUF];
    memset(busy, 0, sizeof busy);
    uint32_t slot = (uint32_t)fg.dev[d->idx].slot;
    uint64_t n = st->trace_next < FG_TRACE_LEN ? st->trace_next : FG_TRACE_LEN;
    for (uint64_t i = 0; i < n && first < last; i++) {
        struct fg_trace t = st->trace[i];
        if (t.dev != slot || t.end <= first * P || t.start >= last * P) continue;
        unsigned k = 0;
        while (k < np && pids[k] != t.pid) k++;
        if (k == np) { if (np == MAX_PIDS) continue; pids[np++] = t.pid; }
        for (uint64_t p = first; p < last; p++) {
            uint64_t a = t.start > p * P ? t.start : p * P, b = t.end < (p + 1) * P ? t.end : (p + 1) * P;
            if (b > a) busy[k][p - first] += b - a;
        }
    }
    unsigned need = 0;
    for (unsigned k = 0; k < np; k++)
        for (uint64_t p = first; p < last; p++) need += busy[k][p - first] > 0;
    if (!need) { *count = 0; return NVML_ERROR_NOT_FOUND; }
    if (!u || *count < need) { *count = need; return NVML_ERROR_INSUFFICIENT_SIZE; }
    unsigned w = 0;
    for (uint64_t p = first; p < last; p++)
        for (unsigned k = 0; k < np; k++) {
            uint64_t b = busy[k][p - first];
            if (!b) continue;
            unsigned pct = (unsigned)((b * 100 + P / 2) / P);
            u[w++] = (nvmlProcessUtilizationSample_t){fg_nvml_pid_of_hostpid(pids[k]), ((p + 1) * P + to_real) / 1000, pct > 100 ? 100 : pct, 0, 0, 0};
        }
    *count = w;
    return NVML_SUCCESS;
}

/* Graphics (OpenGL/Vulkan) clients: the simulated GPUs run compute only. */
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)
{
    (void)infos;
    if (!d || !count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

/* Processes holding memory or running work on the device, by host PID. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)
{
    if (!d || !count) return NVML_ERROR_INVALID_ARGUMENT;
    struct fg_state *st = fg_state();
    uint32_t slot = (uint32_t)fg.dev[d->idx].slot;
    nvmlProcessInfo_t list[FG_MAX_PROCS];
    unsigned n = 0;
    for (int i = 0; i < FG_MAX_PROCS; i++) {
        struct fg_proc *p = &st->proc[i];
        uint64_t used = __atomic_load_n(&p->used[slot], __ATOMIC_RELAXED);
        uint32_t pid = used ? fg_nvml_pid(p) : 0;
        if (!pid) continue;
        list[n++] = (nvmlProcessInfo_t){pid, used, 0xffffffffu, 0xffffffffu};
    }
    if (*count < n || (!infos && n)) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    memcpy(infos, list, n * sizeof *list);
    *count = n;
    return NVML_SUCCESS;
}
