/* Process configuration, read once from the environment at load time
 * (CONTRACT.md). Hooks only ever read these plain fields. */
#ifndef VGPU_CONFIG_H
#define VGPU_CONFIG_H
#include <stdint.h>

#define VGPU_MAX_DEVICES 16
#define VGPU_UUID_LEN 96

enum { VGPU_POLICY_HARD = 0, VGPU_POLICY_BESTEFFORT = 1 };
enum { VGPU_UTIL_DEFAULT = 0, VGPU_UTIL_FORCE = 1, VGPU_UTIL_DISABLE = 2 };

struct vgpu_config {
    int mem_any;                          /* some memory limit is set */
    uint64_t mem_default;                 /* CUDA_DEVICE_MEMORY_LIMIT, 0 = none */
    uint64_t mem_limit[VGPU_MAX_DEVICES]; /* _<i>, 0 = not set */
    int sm_any;                           /* some share < 100 may throttle */
    int sm_default;                       /* -1 = not set */
    int sm_limit[VGPU_MAX_DEVICES];       /* -1 = not set */
    int compute_policy;
    int util_policy;
    int n_uuids;                          /* VGPU_DEVICE_UUIDS entries, 0 = absent */
    char uuids[VGPU_MAX_DEVICES][VGPU_UUID_LEN];
    char region_path[512];
    char gpu_state_dir[512];
    /* test-only: pause inside the allocation critical section */
    int test_pause_ms;
    char test_pause_file[256];
};

extern struct vgpu_config vgpu_cfg;

/* Configuration happens once, at the first of the constructor or a hook
 * (init.c); after that this is one load and a predictable branch. */
extern int vgpu_init_state;
void vgpu_init_slow(void);
static inline void vgpu_ensure_init(void)
{
    if (__builtin_expect(__atomic_load_n(&vgpu_init_state, __ATOMIC_ACQUIRE) != 2, 0)) vgpu_init_slow();
}

void vgpu_config_load(void);
/* Parse HAMi's size format: bytes, or k/K, m/M, g/G suffix. 0 on error. */
uint64_t vgpu_parse_size(const char *s);
/* Quota index of a UUID: position in VGPU_DEVICE_UUIDS, or -1. */
int vgpu_config_uuid_index(const char *uuid);
/* Memory limit for quota index qidx (-1 = not in list): 0 = unlimited. */
uint64_t vgpu_config_mem_limit(int qidx);
/* Share for quota index qidx: 0..100, 100 = no throttling. */
int vgpu_config_sm_limit(int qidx);
#endif
