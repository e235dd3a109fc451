/* Memory accounting: reserve before the driver allocates, release on free.
 * Usage lives in the shared region (per-process slot + device total, updated
 * together under the region lock); which allocation holds how many bytes
 * lives in a process-local table. */
#ifndef VGPU_MEMACCT_H
#define VGPU_MEMACCT_H
#include <stdint.h>
#include "devices.h"

enum vgpu_kind {
    VGPU_KIND_PTR = 1, VGPU_KIND_ARRAY, VGPU_KIND_MIPMAP,
    VGPU_KIND_VMM,    /* a cuMemCreate handle */
    VGPU_KIND_VMAP,   /* a cuMemMap'ed range, keyed by address; aux = its handle */
    VGPU_KIND_CTX,    /* a cuCtxCreate'd context's memory */
    VGPU_KIND_MODULE, /* a loaded module's memory */
};

/* 0 = reserved; -1 = would exceed the quota (after reclaiming dead
 * processes and re-reading what this process's memory pools hold). */
int vgpu_mem_reserve(struct vgpu_dev *d, uint64_t bytes);
void vgpu_mem_unreserve(struct vgpu_dev *d, uint64_t bytes);
/* vgpu_mem_reserve without re-reading pools, frees or driver memory first
 * (for nvproc.c's probe, which those readings may themselves need). */
int vgpu_mem_reserve_nosync(struct vgpu_dev *d, uint64_t bytes);
/* Charge memory the driver has already taken, limit or not. */
void vgpu_mem_charge(struct vgpu_dev *d, uint64_t bytes);

/* The allocation table. Room for one entry is booked before the driver
 * allocates (vgpu_mem_book, -1 when the table cannot grow: refuse the
 * allocation), then either filled by vgpu_mem_track or given back by
 * vgpu_mem_unbook, so that tracking never fails after the fact. */
int vgpu_mem_book(void);
void vgpu_mem_unbook(void);
void vgpu_mem_track(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes);
/* Remove (kind,key) from the table without giving its bytes back; 1 if it
 * was tracked. The caller frees, then vgpu_mem_unreserve()s (so physical use
 * never exceeds the quota), or vgpu_mem_retrack()s it if the free failed. */
int vgpu_mem_take(int kind, uint64_t key, struct vgpu_dev **d, uint64_t *bytes);
void vgpu_mem_retrack(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes);

/* VMM: the driver frees a cuMemCreate allocation when it has been released
 * and its last mapping is gone. */
void vgpu_vmm_mapped(uint64_t handle, uint64_t va, uint64_t size); /* after a booked cuMemMap */
/* After cuMemUnmap: the bytes to give back (allocations released and now
 * unmapped), with their device. */
uint64_t vgpu_vmm_unmapped(uint64_t va, uint64_t size, struct vgpu_dev **d);
/* Before cuMemRelease: 1 if still mapped (the release frees nothing yet;
 * marked released), 0 if the release frees it (then FREE as usual). */
int vgpu_vmm_release_deferred(uint64_t handle);

/* Bytes charged to this process's slot on d. */
uint64_t vgpu_mem_mine(struct vgpu_dev *d);
/* Driver memory no hook sees (procmem.c): what NVML reports for this process
 * on d beyond what the hooks charged is charged too. Re-read at most every
 * 100 ms, at the next call after vgpu_procmem_dirty, or now if force;
 * returns the bytes given back. */
uint64_t vgpu_procmem_sync(struct vgpu_dev *d, int force);
/* Something may have taken (or released) such memory on d. */
void vgpu_procmem_dirty(struct vgpu_dev *d);
/* After a successful graph launch: its first launch marks the current
 * device dirty (the graph memory pool reserves at a graph's launch). */
void vgpu_procmem_graph_launched(CUgraphExec g);
/* drvmem.c's measured charges (contexts, modules), which NVML's figure may
 * correct downwards: recorded when charged; at release, the bytes still to
 * be given back (less what a correction gave back already). */
void vgpu_procmem_driver_charged(struct vgpu_dev *d, uint64_t bytes);
uint64_t vgpu_procmem_driver_released(struct vgpu_dev *d, uint64_t bytes);
/* Around a driver call whose memory is charged only after it returns. */
void vgpu_procmem_hold(void);
void vgpu_procmem_release(void);
void vgpu_procmem_atfork_child(void);
/* Claim-wide bytes in use on d (lock-free read). */
uint64_t vgpu_mem_used(struct vgpu_dev *d);
/* Occasionally reclaim dead processes' usage (rate-limited; for info calls). */
void vgpu_mem_maybe_reclaim(void);
void vgpu_memacct_atfork_child(void);

/* Memory pools (pools.c): what a pool holds is charged, not what is
 * allocated from it. Re-read every known pool's reserve (first trimming the
 * pools to what is in use if trim); returns the bytes given back. */
uint64_t vgpu_pools_sync(int trim);
/* Give back the charges of cuMemAlloc'd memory freed with cuMemFreeAsync
 * whose streams have now run the free; returns the bytes given back. */
uint64_t vgpu_deferred_frees_poll(void);
void vgpu_pools_atfork_child(void);

/* What the driver takes for contexts and modules (drvmem.c). */
void vgpu_drvmem_atfork_child(void);
/* For the context-teardown hooks: a primary context reset frees its memory. */
void vgpu_drvmem_primary_reset(CUdevice d);
#endif
