/* Compute-share limiter (README "Compute limiter"). */
#ifndef VGPU_LIMITER_H
#define VGPU_LIMITER_H
#include "vgpu_cuda.h"

/* Nonzero once some device of this process is throttled; the launch hooks'
 * only test when no limit is set. */
extern int vgpu_lim_active;
void vgpu_lim_after_init(void);
/* At load: arm the launch hooks if a share is configured; the first launch
 * (or cuInit) then finds which devices are really throttled. */
void vgpu_lim_config(void);
void vgpu_lim_before_launch(CUstream s);
void vgpu_lim_after_launch(CUstream s, CUresult r);
#endif
