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
/* Handle lifetimes: the limiter forgets every burst and event of what is
 * destroyed, in every thread. vgpu_lim_stream_destroy runs before the
 * driver's cuStreamDestroy; the others call the driver themselves (the real
 * cuCtxDestroy_v2, cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxReset_v2),
 * so that no event of the context is polled while it goes. */
void vgpu_lim_stream_destroy(CUstream s);
CUresult vgpu_lim_ctx_destroy(CUcontext c);
CUresult vgpu_lim_primary_release(CUdevice dev);
CUresult vgpu_lim_primary_reset(CUdevice dev);
/* A stream capture begins: bursts re-check whether their stream captures. */
void vgpu_lim_capture_begin(CUstream s);
#endif
