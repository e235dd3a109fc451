/* Memory accounting: reserve before the driver allocates, release on free.
 * Usage lives in the shared region (per-process slot + device total, updated
 * together under the region lock); which allocation holds how many bytes
 * lives in a process-local table. */
#ifndef VGPU_MEMACCT_H
#define VGPU_MEMACCT_H
#include <stdint.h>
#include "devices.h"

enum vgpu_kind { VGPU_KIND_PTR = 1, VGPU_KIND_ARRAY, VGPU_KIND_MIPMAP, VGPU_KIND_VMM };

/* 0 = reserved; -1 = would exceed the quota (after reclaiming dead processes). */
int vgpu_mem_reserve(struct vgpu_dev *d, uint64_t bytes);
void vgpu_mem_unreserve(struct vgpu_dev *d, uint64_t bytes);
/* Remember that (kind,key) holds bytes reserved on d. */
void vgpu_mem_track(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes);
/* Remove (kind,key) from the table without giving its bytes back; 1 if it
 * was tracked. The caller frees, then vgpu_mem_unreserve()s (so physical use
 * never exceeds the quota), or vgpu_mem_track()s it again if the free failed. */
int vgpu_mem_take(int kind, uint64_t key, struct vgpu_dev **d, uint64_t *bytes);
/* Claim-wide bytes in use on d (lock-free read). */
uint64_t vgpu_mem_used(struct vgpu_dev *d);
/* Occasionally reclaim dead processes' usage (rate-limited; for info calls). */
void vgpu_mem_maybe_reclaim(void);
void vgpu_memacct_atfork_child(void);
#endif
