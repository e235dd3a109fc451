/* The claim's shared accounting region: a fixed-layout little-endian file
 * mmapped MAP_SHARED by every process of the claim (README "Shared region").
 * Liveness and mutual exclusion use OFD record locks, which the kernel drops
 * when the owner dies, in any PID namespace. */
#ifndef VGPU_REGION_H
#define VGPU_REGION_H
#include <stdint.h>
#include "config.h"

#define VGPU_REGION_MAGIC 0x55504756u /* "VGPU" little-endian */
#define VGPU_REGION_VERSION 1u
#define VGPU_REGION_SLOTS 1024
/* Lock bytes (beyond EOF, part of the ABI across versions). */
#define VGPU_LOCK_BASE (1LL << 30)
#define VGPU_LOCK_PRESENCE (VGPU_LOCK_BASE + 0) /* read-held by every attached process */
#define VGPU_LOCK_CRIT (VGPU_LOCK_BASE + 1)     /* attach: validation and initialisation */
#define VGPU_LOCK_SLOT0 (VGPU_LOCK_BASE + 4096) /* + slot index: slot ownership */

struct vgpu_region_header {           /* 256 bytes at offset 0 */
    uint32_t magic, version;
    uint32_t header_size, total_size;
    uint32_t max_devices, max_slots;
    uint32_t device_size, slot_size;
    uint32_t device_offset, slot_offset;
    uint64_t lock;                    /* 0 free; else holder: slot+1 | slot generation << 32 */
    uint32_t repairs;                 /* times a dead holder's section was repaired */
    uint8_t pad[204];
};

struct vgpu_region_device {           /* 256 bytes, VGPU_MAX_DEVICES of them */
    char uuid[VGPU_UUID_LEN];         /* NUL-terminated "GPU-..."; empty = unused entry */
    uint64_t mem_limit;               /* bytes, as configured by the last process (informational) */
    uint64_t mem_used;                /* bytes: sum of the slots' used[] for this entry */
    uint32_t sm_limit;                /* percent, informational */
    uint32_t lim_pad;
    /* compute limiter (limiter.c) */
    uint64_t gpu_ns_total;            /* GPU time charged to the claim, ns, ever */
    int64_t tokens_ns;                /* budget left in the current window (may go negative) */
    uint64_t window_start_ns;         /* CLOCK_MONOTONIC of the current window */
    uint64_t last_demand_ns;          /* last time a process of the claim wanted to launch */
    uint64_t throttled_ns_total;      /* time launches were held back, ns, ever */
    uint8_t pad[96];
};

struct vgpu_region_slot {             /* 192 bytes, VGPU_REGION_SLOTS of them */
    uint32_t in_use;
    int32_t pid;                      /* in the owner's PID namespace; informational */
    uint64_t used[VGPU_MAX_DEVICES];  /* bytes this process holds per device entry */
    uint64_t gen;                     /* bumped each time the slot is taken */
    uint8_t pad[192 - 16 - 8 * VGPU_MAX_DEVICES];
};

struct vgpu_region {
    struct vgpu_region_header h;
    struct vgpu_region_device dev[VGPU_MAX_DEVICES];
    struct vgpu_region_slot slot[VGPU_REGION_SLOTS];
};

/* Attach if needed (process-local fallback if the file is unusable). Never NULL. */
struct vgpu_region *vgpu_region_get(void);
int vgpu_region_is_shared(void);
/* The accounting critical section: a spin lock in the region whose holder is
 * named by slot and generation, so a waiter can prove the holder dead (its
 * slot's OFD lock is gone) and take over, repairing the totals. */
struct vgpu_region *vgpu_region_lock(void);
void vgpu_region_unlock(void);
/* Under the lock: own slot index, device entry for uuid (created if new, -1 if full). */
int vgpu_region_my_slot(void);
int vgpu_region_device(const char *uuid);
/* Under the lock: free the slots of dead processes; returns how many. */
int vgpu_region_reclaim_dead(void);
void vgpu_region_init(void); /* constructor: atfork handler */
void vgpu_region_detach(void); /* destructor */
#endif
