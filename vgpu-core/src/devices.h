/* Device identity: CUDA ordinal or NVML handle -> UUID -> quota index ->
 * limits and the region's device entry. Resolved once, then plain reads. */
#ifndef VGPU_DEVICES_H
#define VGPU_DEVICES_H
#include <stdint.h>
#include "config.h"
#include "vgpu_cuda.h"
#include "vgpu_nvml.h"

struct vgpu_dev {
    int qidx;              /* quota index, -1 if the UUID is not in VGPU_DEVICE_UUIDS */
    uint64_t mem_limit;    /* 0 = no memory limit on this device */
    int sm_limit;          /* 100 = no throttling */
    int region_dev;        /* entry in the shared region, -1 until first use */
    int ordinal;           /* CUDA ordinal, -1 for a device known only to NVML */
    char uuid[VGPU_UUID_LEN];
};

/* NULL if the ordinal is unknown, or before cuInit has succeeded (the
 * table is built at the first call after that, never latched empty). */
struct vgpu_dev *vgpu_dev_by_ordinal(CUdevice d);
/* The current context's device, NULL if none. */
struct vgpu_dev *vgpu_dev_current(void);
/* NVML handle -> device (NULL if unknown). */
struct vgpu_dev *vgpu_dev_by_nvml(nvmlDevice_t h);
/* The region entry index for this device (attaches to the region). */
int vgpu_dev_region_index(struct vgpu_dev *d);
void vgpu_format_uuid(const CUuuid *u, char *out, size_t n);
void vgpu_devices_after_init(void);
/* Number of CUDA devices known (0 before cuInit). */
int vgpu_dev_count(void);
/* Device-wide free memory as NVML reports it (no context needed); -1 if
 * NVML cannot tell. */
int vgpu_dev_nvml_free(struct vgpu_dev *d, uint64_t *free_b);
void vgpu_devices_atfork_child(void);
#endif
