#define _GNU_SOURCE
#include "devices.h"
#include "dispatch.h"
#include "log.h"
#include "region.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_ORDINALS 64
static struct vgpu_dev cuda_devs[MAX_ORDINALS];
static int n_cuda_devs;
static int cuda_done;
static pthread_mutex_t cuda_mu = PTHREAD_MUTEX_INITIALIZER;

void vgpu_format_uuid(const CUuuid *u, char *out, size_t n)
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void fill(struct vgpu_dev *d, int qidx, int ordinal)
{
    d->qidx = qidx;
    d->ordinal = ordinal;
    d->mem_limit = vgpu_config_mem_limit(qidx);
    d->sm_limit = vgpu_config_sm_limit(qidx);
    d->region_dev = -1;
}

/* -1 while the driver cannot enumerate (before cuInit): try again later. */
static int enumerate_cuda(void)
{
    int n = 0;
    if (REAL(cuDeviceGetCount)(&n) != CUDA_SUCCESS) return -1;
    if (n > MAX_ORDINALS) n = MAX_ORDINALS;
    for (int i = 0; i < n; i++) {
        struct vgpu_dev *d = &cuda_devs[i];
        CUdevice dev = i;
        REAL(cuDeviceGet)(&dev, i);
        CUuuid u;
        memset(&u, 0, sizeof u);
        CUresult r = REAL(cuDeviceGetUuid_v2)(&u, dev);
        if (r != CUDA_SUCCESS) r = REAL(cuDeviceGetUuid)(&u, dev);
        if (r == CUDA_SUCCESS) vgpu_format_uuid(&u, d->uuid, sizeof d->uuid);
        else snprintf(d->uuid, sizeof d->uuid, "ordinal-%d", i);
        /* the UUID list is authoritative; without it, HAMi's ordinal rule */
        int q = vgpu_cfg.n_uuids ? vgpu_config_uuid_index(d->uuid) : i;
        fill(d, q, i);
        LOG_INFO("CUDA device %d %s: quota index %d, memory limit %llu, share %d%%",
                 i, d->uuid, q, (unsigned long long)d->mem_limit, d->sm_limit);
    }
    __atomic_store_n(&n_cuda_devs, n, __ATOMIC_RELEASE);
    return 0;
}

void vgpu_devices_after_init(void)
{
    if (__atomic_load_n(&cuda_done, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&cuda_mu);
    if (!cuda_done && enumerate_cuda() == 0) __atomic_store_n(&cuda_done, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&cuda_mu);
}

int vgpu_dev_count(void)
{
    vgpu_devices_after_init();
    return __atomic_load_n(&n_cuda_devs, __ATOMIC_ACQUIRE);
}

struct vgpu_dev *vgpu_dev_by_ordinal(CUdevice d)
{
    vgpu_devices_after_init();
    if (d < 0 || d >= __atomic_load_n(&n_cuda_devs, __ATOMIC_ACQUIRE)) return NULL;
    return &cuda_devs[d];
}

struct vgpu_dev *vgpu_dev_current(void)
{
    CUdevice d;
    if (REAL(cuCtxGetDevice)(&d) != CUDA_SUCCESS) return NULL;
    return vgpu_dev_by_ordinal(d);
}

int vgpu_dev_region_index(struct vgpu_dev *d)
{
    int idx = __atomic_load_n(&d->region_dev, __ATOMIC_ACQUIRE);
    if (idx >= 0) return idx;
    struct vgpu_region *r = vgpu_region_lock();
    idx = vgpu_region_device(d->uuid);
    if (idx >= 0) {
        r->dev[idx].mem_limit = d->mem_limit;
        r->dev[idx].sm_limit = (uint32_t)d->sm_limit;
    }
    vgpu_region_unlock();
    if (idx < 0) LOG_ERR("shared region has no free device entry for %s", d->uuid);
    __atomic_store_n(&d->region_dev, idx, __ATOMIC_RELEASE);
    return idx;
}

/* NVML: handles are per host order and ignore CUDA_VISIBLE_DEVICES, so map
 * through the UUID. Without VGPU_DEVICE_UUIDS, the quota index is the UUID's
 * position in CUDA_VISIBLE_DEVICES (when it lists UUIDs) or the NVML index. */
#define MAX_NVML 64
static struct { nvmlDevice_t h; struct vgpu_dev d; } nvml_devs[MAX_NVML];
static int n_nvml;
static pthread_mutex_t nvml_mu = PTHREAD_MUTEX_INITIALIZER;

static int visible_index(const char *uuid, unsigned nvml_index)
{
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES"); /* NVML path only: not hot */
    if (!cvd || !*cvd) return (int)nvml_index;
    int pos = 0;
    const char *p = cvd;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len && !strncasecmp(p, uuid, len) && (p[0] == 'G' || p[0] == 'g')) return pos;
        if (len && p[0] >= '0' && p[0] <= '9' && (unsigned)atoi(p) == nvml_index) return pos;
        pos++;
        if (!e) break;
        p = e + 1;
    }
    return -1;
}

struct vgpu_dev *vgpu_dev_by_nvml(nvmlDevice_t h)
{
    pthread_mutex_lock(&nvml_mu);
    for (int i = 0; i < n_nvml; i++)
        if (nvml_devs[i].h == h) { pthread_mutex_unlock(&nvml_mu); return &nvml_devs[i].d; }
    struct vgpu_dev *out = NULL;
    char uuid[VGPU_UUID_LEN];
    if (n_nvml < MAX_NVML && REAL(nvmlDeviceGetUUID)(h, uuid, sizeof uuid) == NVML_SUCCESS) {
        int q;
        if (vgpu_cfg.n_uuids) {
            q = vgpu_config_uuid_index(uuid);
        } else {
            unsigned cnt = 0;
            q = -1;
            REAL(nvmlDeviceGetCount_v2)(&cnt);
            for (unsigned i = 0; i < cnt; i++) {
                nvmlDevice_t hi;
                if (REAL(nvmlDeviceGetHandleByIndex_v2)(i, &hi) == NVML_SUCCESS && hi == h) {
                    q = visible_index(uuid, i);
                    break;
                }
            }
        }
        out = &nvml_devs[n_nvml].d;
        snprintf(out->uuid, sizeof out->uuid, "%s", uuid);
        fill(out, q, -1);
        nvml_devs[n_nvml].h = h;
        n_nvml++;
    }
    pthread_mutex_unlock(&nvml_mu);
    return out;
}

static int nvml_ready(void)
{
    static int state; /* 0 unknown, 1 initialised, -1 unavailable */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (!s) {
        s = REAL(nvmlInit_v2)() == NVML_SUCCESS ? 1 : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
}

int vgpu_dev_nvml_free(struct vgpu_dev *d, uint64_t *free_b)
{
    if (!nvml_ready()) return -1;
    unsigned cnt = 0;
    if (REAL(nvmlDeviceGetCount_v2)(&cnt) != NVML_SUCCESS) return -1;
    for (unsigned i = 0; i < cnt; i++) {
        nvmlDevice_t h;
        char uuid[VGPU_UUID_LEN];
        if (REAL(nvmlDeviceGetHandleByIndex_v2)(i, &h) != NVML_SUCCESS) continue;
        if (REAL(nvmlDeviceGetUUID)(h, uuid, sizeof uuid) != NVML_SUCCESS || strcasecmp(uuid, d->uuid)) continue;
        nvmlMemory_t m;
        if (REAL(nvmlDeviceGetMemoryInfo)(h, &m) != NVML_SUCCESS) return -1;
        *free_b = m.free;
        return 0;
    }
    return -1;
}

/* A thread of the parent may have held these at fork(): the child has only
 * the forking thread, so they start free. */
void vgpu_devices_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    nvml_mu = fresh;
    cuda_mu = fresh;
}
