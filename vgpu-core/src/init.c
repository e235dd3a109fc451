/* Load-time setup: the environment is read exactly once, here. The driver
 * itself is loaded lazily (dispatch.c) so processes that never touch CUDA
 * (shells, tools) pay nothing but this constructor. */
#include "config.h"
#include "limiter.h"
#include "memacct.h"
#include "region.h"
#include <pthread.h>

static void atfork_child(void) { vgpu_memacct_atfork_child(); }

__attribute__((constructor)) static void vgpu_init(void)
{
    vgpu_config_load();
    vgpu_lim_config();
    vgpu_region_init();
    pthread_atfork(0, 0, atfork_child);
}

__attribute__((destructor)) static void vgpu_fini(void) { vgpu_region_detach(); }
