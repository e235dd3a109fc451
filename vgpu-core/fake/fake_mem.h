/* The fake driver's memory side (fake_mem.c) and what it needs from the
 * context and stream side (fake_cuda.c). Internal to the fake libcuda. */
#ifndef FAKE_MEM_H
#define FAKE_MEM_H
#include "vgpu_cuda.h"
#include <stdint.h>

/* fake_cuda.c: host index of a CUDA ordinal (-1 if not visible), the
 * ordinal of the calling thread's current context (-1 if none), whether
 * cuInit has run, and a stream's ordinal and the time (fg_now() clock) at
 * which the work queued on it so far completes (-1: invalid stream). */
int fk_host(CUdevice d);
int fk_current_dev(void);
int fk_initialized(void);
int fk_stream(CUstream s, int *dev, uint64_t *done_at);
/* fake_exec.c: queue a marker on s for a stream-ordered free; its lane and
 * sequence number (poll with fg_lane_query), lane -1 if s has no queued
 * work; -1 for an invalid stream. */
int fk_stream_marker(CUstream s, int *lane, uint64_t *seq);

/* fake_mem.c: a context (primary at its first retain, or cuCtxCreate'd)
 * takes FAKE_CTX_MEM bytes of the device's memory until it is destroyed;
 * CUDA_ERROR_OUT_OF_MEMORY when the device has no room for it. */
CUresult fm_ctx_acquire(CUdevice d);
void fm_ctx_release(CUdevice d);
/* fake_exec.c: 1 if s is being captured (n bytes of memory nodes are then
 * added to the capture's graph), 0 if not, -1 for an invalid stream. */
int fk_capture_alloc(CUstream s, uint64_t n);
/* fake_mem.c: a graph with `bytes` of memory nodes is launched on device d:
 * the device's graph memory pool reserves them if it holds less
 * (CUDA_ERROR_OUT_OF_MEMORY when the device has no room). */
CUresult fm_graph_reserve(CUdevice d, uint64_t bytes);
/* fake_mem.c: kernel `name` of module m is fetched; under lazy loading its
 * code takes FAKE_KERNEL_MEM bytes at its first fetch. */
CUresult fm_kernel_load(CUmodule m, const char *name);
/* Stream, event and context synchronisation: pools release what they hold
 * above their release threshold (CUDA's documented trim point). */
void fm_on_sync(void);
#endif
