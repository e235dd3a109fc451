/* Setup: the environment is read once, at the first of libvgpu's
 * constructor or any hooked call (another library's constructor may call
 * the driver before ours has run). The driver itself is loaded lazily
 * (dispatch.c) so processes that never touch CUDA (shells, tools) pay
 * nothing but this. Nothing here may abort the process: bad settings are
 * logged and ignored (config.c), an unusable region file falls back to
 * process-local accounting (region.c). */
#include "config.h"
#include "devices.h"
#include "limiter.h"
#include "memacct.h"
#include "nvproc.h"
#include "region.h"
#include <pthread.h>
#include <sched.h>

int vgpu_init_state; /* 0 not started, 1 in progress, 2 done */
static __thread int in_init;

/* Only the forking thread exists in the child: locks other threads held
 * start free, and an initialisation another thread had under way starts
 * over. */
static void atfork_child(void)
{
    vgpu_memacct_atfork_child();
    vgpu_pools_atfork_child();
    vgpu_drvmem_atfork_child();
    vgpu_procmem_atfork_child();
    vgpu_nvproc_atfork_child();
    vgpu_devices_atfork_child();
    if (__atomic_load_n(&vgpu_init_state, __ATOMIC_RELAXED) == 1) __atomic_store_n(&vgpu_init_state, 0, __ATOMIC_RELAXED);
}

void vgpu_init_slow(void)
{
    static int registered;
    if (in_init) return; /* a hook reached from inside the initialisation itself */
    int expect = 0;
    if (__atomic_compare_exchange_n(&vgpu_init_state, &expect, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        in_init = 1;
        vgpu_config_load();
        vgpu_lim_config();
        if (!registered) {
            registered = 1;
            vgpu_region_init();
            pthread_atfork(0, 0, atfork_child);
        }
        in_init = 0;
        __atomic_store_n(&vgpu_init_state, 2, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&vgpu_init_state, __ATOMIC_ACQUIRE) != 2) sched_yield();
}

__attribute__((constructor)) static void vgpu_init(void) { vgpu_ensure_init(); }

__attribute__((destructor)) static void vgpu_fini(void) { vgpu_region_detach(); }
