/* The fake driver's execution side (fake_exec.c): contexts' streams and
 * events on the engine of fake_gpu.c, stream capture, and the handles'
 * lifetimes. Internal to the fake libcuda. */
#ifndef FAKE_EXEC_H
#define FAKE_EXEC_H
#include "vgpu_cuda.h"
#include <pthread.h>
#include <stdint.h>

struct CUstream_st {
    uint32_t magic;            /* cleared when destroyed: a stale handle is refused */
    int dev;                   /* ordinal */
    struct CUctx_st *ctx;
    int lane;                  /* engine lane, -1 until the first submission */
    uint64_t last_seq;         /* newest item submitted (valid when submitted) */
    int submitted;
    /* stream capture */
    int capturing, cap_mode, cap_invalid;
    pthread_t cap_thread;
    uint64_t cap_ns;           /* GPU time of the kernels captured so far */
    uint64_t cap_mem;          /* bytes of the memory nodes captured so far */
    struct CUstream_st *next;  /* the context's streams */
};
struct CUctx_st {
    uint32_t magic;
    int dev;
    uint64_t key;              /* engine context key */
    struct CUstream_st def;    /* NULL, legacy and per-thread default stream */
    struct CUstream_st *streams;
    struct CUevent_st *events;
};
struct CUevent_st {
    uint32_t magic;
    struct CUctx_st *ctx;
    int recorded, lane;
    uint64_t seq;
    struct CUevent_st *next;
};

/* fake_cuda.c: the calling thread's current context. */
CUcontext fk_ctx(void);
/* A context comes to life / is destroyed with every stream and event of it. */
void fx_ctx_init(struct CUctx_st *c, int dev);
void fx_ctx_teardown(struct CUctx_st *c);
/* CUDA_SUCCESS, or the error a call on context c gets (destroyed: 709). */
CUresult fx_ctx_check(struct CUctx_st *c);
#endif
