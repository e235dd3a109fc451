/* This process as NVML sees it. NVML names processes by host PID, and this
 * process may live in another PID namespace (a container), so the PID is
 * found by experiment, once per process and device (nvproc.c). Used by the
 * compute limiter (NVML's per-process GPU time) and by the memory
 * accounting (NVML's per-process device memory). */
#ifndef VGPU_NVPROC_H
#define VGPU_NVPROC_H
#include <stdint.h>
#include "devices.h"

enum { VGPU_NVPROC_OK = 0, VGPU_NVPROC_NO_NVML = -1, VGPU_NVPROC_UNKNOWN = -2, VGPU_NVPROC_LATER = -3 };

/* NVML's handle for d and the host PID NVML names this process by.
 * The first call for a device probes with two small allocations, so it needs
 * a context on d current; the answer is kept, later calls are plain reads.
 * VGPU_NVPROC_NO_NVML: NVML is unavailable; VGPU_NVPROC_UNKNOWN: NVML does
 * not single this process out; VGPU_NVPROC_LATER: d's memory quota has no
 * room for the probe now (it is charged like any allocation, so that it
 * never takes the claim past its quota); asked again, it probes again at
 * most once a second. */
int vgpu_nvproc_find(struct vgpu_dev *d, nvmlDevice_t *h, unsigned *hostpid);
/* 1 if vgpu_nvproc_find has already answered VGPU_NVPROC_OK for d (no probe). */
int vgpu_nvproc_known(struct vgpu_dev *d);
/* The device memory NVML reports for hostpid on h (0 when the process holds
 * none); -1 if NVML cannot tell. */
int vgpu_nvproc_mem(nvmlDevice_t h, unsigned hostpid, uint64_t *bytes);
void vgpu_nvproc_atfork_child(void);
#endif
