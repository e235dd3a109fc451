/* The fake driver's memory side (fake_mem.c) and what it needs from the
 * context and stream side (fake_cuda.c). Internal to the fake libcuda. */
#ifndef FAKE_MEM_H
#define FAKE_MEM_H
#include "vgpu_cuda.h"

/* fake_cuda.c: host index of a CUDA ordinal (-1 if not visible), and the
 * ordinal of the calling thread's current context (-1 if none). */
int fk_host(CUdevice d);
int fk_current_dev(void);
#endif
