/* The fake driver's execution side: kernels, streams, events and stream
 * capture, on the engine of fake_gpu.c (FAKE_GPU_SCHED picks how contexts
 * share the GPU). It follows the CUDA driver API's documented rules where
 * libvgpu depends on them:
 *  - an event completes when its stream reaches it, not when it is recorded;
 *  - an event belongs to the context it was created in and can be recorded
 *    only on that context's streams (CUDA_ERROR_INVALID_HANDLE otherwise);
 *  - destroyed streams, events and contexts are refused
 *    (CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_CONTEXT_IS_DESTROYED) and their
 *    memory is freed, so an AddressSanitizer build catches any later use;
 *    cuCtxDestroy and the primary context's reset or last release destroy
 *    every stream and event of the context;
 *  - stream capture (cuStreamBeginCapture_v2 modes and
 *    cuThreadExchangeStreamCaptureMode): while a capture is open, potentially
 *    unsafe calls (event and stream queries and synchronisation) fail with
 *    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED in the threads the capture's mode
 *    prohibits, and invalidate it: its cuStreamEndCapture then returns
 *    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. Kernels launched into a capture
 *    run nothing; the graph runs them when launched.
 * Kernel time: a function named "sleep_ns" runs for *(uint64_t *)params[0]
 * ns; other functions run FAKE_KERNEL_NS. A CUgraphExec handle is a pointer
 * to a uint64_t duration (tests pass their own). */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "fake_exec.h"
#include "fake_gpu.h"
#include "fake_mem.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CTX_MAGIC 0xc0c7c7c7u
#define STREAM_MAGIC 0x57ea5a11u
#define EVENT_MAGIC 0xe7e7e7e7u
#define GRAPH_MAGIC 0x62a9b0c5u

struct CUfunc_st { int timed; };
struct CUgraph_st { uint32_t magic; uint64_t ns, mem; };
/* An executable graph: its kernels' GPU time (first, as cuGraphLaunch reads
 * it) and the bytes of its memory nodes. */
struct fexec { uint64_t ns, mem; };
static struct CUfunc_st timed_fn = {1}, plain_fn = {0};
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* lists, captures */

/* ---- contexts ---- */
void fx_ctx_init(struct CUctx_st *c, int dev)
{
    memset(c, 0, sizeof *c);
    c->magic = CTX_MAGIC;
    c->dev = dev;
    c->key = fg_ctx_key();
    c->def.magic = STREAM_MAGIC;
    c->def.dev = dev;
    c->def.ctx = c;
    c->def.lane = -1;
}

static void stream_release(struct CUstream_st *s)
{
    if (s->lane >= 0) fg_lane_close(s->lane); /* queued work still runs, as in CUDA */
    s->magic = 0;
}

static void uncapture(struct CUstream_st *s);

void fx_ctx_teardown(struct CUctx_st *c)
{
    pthread_mutex_lock(&mu);
    for (struct CUstream_st *s = c->streams, *n; s; s = n) {
        n = s->next;
        uncapture(s);
        stream_release(s);
        free(s);
    }
    for (struct CUevent_st *e = c->events, *n; e; e = n) {
        n = e->next;
        e->magic = 0;
        free(e);
    }
    uncapture(&c->def);
    stream_release(&c->def);
    c->streams = NULL;
    c->events = NULL;
    c->magic = 0;
    pthread_mutex_unlock(&mu);
}

CUresult fx_ctx_check(struct CUctx_st *c)
{
    if (!c) return CUDA_ERROR_INVALID_CONTEXT;
    return c->magic == CTX_MAGIC ? CUDA_SUCCESS : CUDA_ERROR_CONTEXT_IS_DESTROYED;
}

/* ---- stream capture ---- */
#define MAX_CAPTURES 64
static struct CUstream_st *captures[MAX_CAPTURES];
static __thread int thread_mode; /* this thread's capture interaction mode, CU_STREAM_CAPTURE_MODE_GLOBAL at start */

static void uncapture(struct CUstream_st *s) /* mu held */
{
    for (int i = 0; i < MAX_CAPTURES; i++)
        if (captures[i] == s) captures[i] = NULL;
    s->capturing = 0;
}

/* A potentially unsafe call in this thread: prohibited, and the captures
 * that prohibit it invalidated, per the capture modes' documented rules:
 * a thread in relaxed mode is never prohibited; otherwise its own capture
 * (unless begun in relaxed mode) prohibits, and in global mode so does any
 * other thread's capture begun in global mode. */
static int prohibited(void)
{
    if (thread_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return 0;
    int hit = 0;
    pthread_t me = pthread_self();
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_CAPTURES; i++) {
        struct CUstream_st *s = captures[i];
        if (!s) continue;
        int own = pthread_equal(s->cap_thread, me);
        if ((own && s->cap_mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
            (!own && thread_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && s->cap_mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
            s->cap_invalid = 1;
            hit = 1;
        }
    }
    pthread_mutex_unlock(&mu);
    return hit;
}

CUresult cuThreadExchangeStreamCaptureMode(int *mode)
{
    if (!mode || *mode < 0 || *mode > 2) return CUDA_ERROR_INVALID_VALUE;
    int old = thread_mode;
    thread_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

/* ---- streams ---- */
static int is_default(CUstream s) { return !s || s == (CUstream)1 || s == (CUstream)2; }

/* The stream, or NULL with *err set: the default streams are the current
 * context's; a created stream is checked (freed memory: ASan reports it). */
static struct CUstream_st *strm(CUstream s, CUresult *err)
{
    if (is_default(s)) {
        CUresult r = fx_ctx_check(fk_ctx());
        if (r) { *err = r; return NULL; }
        return &fk_ctx()->def;
    }
    if (s->magic != STREAM_MAGIC) { *err = CUDA_ERROR_INVALID_HANDLE; return NULL; }
    if (fx_ctx_check(s->ctx)) { *err = CUDA_ERROR_CONTEXT_IS_DESTROYED; return NULL; }
    return s;
}

static int lane_of(struct CUstream_st *st)
{
    if (st->lane < 0) st->lane = fg_lane_open(fk_host(st->dev), st->ctx->key);
    return st->lane;
}

static CUresult submit(struct CUstream_st *st, uint64_t dur, uint64_t *seq)
{
    int lane = lane_of(st);
    if (lane < 0) return CUDA_ERROR_OUT_OF_MEMORY; /* more streams than the engine models */
    uint64_t q = fg_lane_submit(lane, dur);
    st->last_seq = q;
    st->submitted = 1;
    if (seq) *seq = q;
    return CUDA_SUCCESS;
}

int fk_stream(CUstream s, int *dev, uint64_t *done_at)
{
    CUresult err;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return -1;
    *dev = st->dev;
    *done_at = 0;
    uint64_t t;
    /* still queued: the time is not known yet (alternate and slice models), ask again later */
    if (st->submitted && st->lane >= 0) *done_at = fg_lane_query(st->lane, st->last_seq, &t) ? t : UINT64_MAX;
    return 0;
}

/* fake_mem.c: a stream-ordered free is a marker on the stream's lane; it
 * takes effect when the lane reaches it (lane -1: nothing is queued on the
 * stream, the free is immediate). */
int fk_stream_marker(CUstream s, int *lane, uint64_t *seq)
{
    CUresult err;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return -1;
    *lane = -1;
    if (st->submitted && st->lane >= 0) {
        *lane = st->lane;
        *seq = st->last_seq = fg_lane_submit(st->lane, 0);
    }
    return 0;
}

CUresult cuStreamCreate(CUstream *s, unsigned flags)
{
    (void)flags;
    CUresult r = fx_ctx_check(fk_ctx());
    if (r) return r;
    struct CUstream_st *x = calloc(1, sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    x->magic = STREAM_MAGIC;
    x->dev = fk_ctx()->dev;
    x->ctx = fk_ctx();
    x->lane = -1;
    pthread_mutex_lock(&mu);
    x->next = fk_ctx()->streams;
    fk_ctx()->streams = x;
    pthread_mutex_unlock(&mu);
    *s = x;
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream s)
{
    if (is_default(s)) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    if (!strm(s, &err)) return err;
    pthread_mutex_lock(&mu);
    struct CUstream_st **pp = &s->ctx->streams;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (*pp) *pp = s->next;
    uncapture(s);
    stream_release(s);
    pthread_mutex_unlock(&mu);
    free(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy(CUstream s) { return cuStreamDestroy_v2(s); }

static CUresult stream_wait(struct CUstream_st *st)
{
    if (st->submitted && st->lane >= 0) fg_lane_wait(st->lane, st->last_seq);
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    stream_wait(st);
    fm_on_sync();
    return CUDA_SUCCESS;
}

CUresult cuStreamQuery(CUstream s)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    uint64_t t;
    if (st->submitted && st->lane >= 0 && !fg_lane_query(st->lane, st->last_seq, &t)) return CUDA_ERROR_NOT_READY;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void)
{
    CUresult r = fx_ctx_check(fk_ctx());
    if (r) return r;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    pthread_mutex_lock(&mu);
    struct CUstream_st *list[256];
    int n = 0;
    list[n++] = &fk_ctx()->def;
    for (struct CUstream_st *s = fk_ctx()->streams; s && n < 256; s = s->next) list[n++] = s;
    /* positions to wait for, taken under the lock; the streams may go meanwhile */
    int lanes[256];
    uint64_t seqs[256];
    int m = 0;
    for (int i = 0; i < n; i++)
        if (list[i]->submitted && list[i]->lane >= 0) { lanes[m] = list[i]->lane; seqs[m++] = list[i]->last_seq; }
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < m; i++) fg_lane_wait(lanes[i], seqs[i]);
    fm_on_sync();
    return CUDA_SUCCESS;
}

/* ---- capture ---- */
static CUresult begin_capture(CUstream s, int mode)
{
    if (mode < 0 || mode > 2) return CUDA_ERROR_INVALID_VALUE;
    if (is_default(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* the legacy stream cannot be captured */
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    pthread_mutex_lock(&mu);
    int slot = -1;
    for (int i = 0; i < MAX_CAPTURES && slot < 0; i++)
        if (!captures[i]) slot = i;
    if (st->capturing || slot < 0) { pthread_mutex_unlock(&mu); return CUDA_ERROR_ILLEGAL_STATE; }
    st->capturing = 1;
    st->cap_mode = mode;
    st->cap_invalid = 0;
    st->cap_thread = pthread_self();
    st->cap_ns = 0;
    st->cap_mem = 0;
    captures[slot] = st;
    pthread_mutex_unlock(&mu);
    return CUDA_SUCCESS;
}
CUresult cuStreamBeginCapture_v2(CUstream s, int mode) { return begin_capture(s, mode); }
CUresult cuStreamBeginCapture(CUstream s) { return begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL); }
CUresult cuStreamBeginCapture_ptsz(CUstream s) { return begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL); }
CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, int mode) { return begin_capture(s, mode); }

CUresult cuStreamEndCapture(CUstream s, CUgraph *g)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    if (!g) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    if (!st->capturing) { pthread_mutex_unlock(&mu); return CUDA_ERROR_ILLEGAL_STATE; }
    if (st->cap_mode != CU_STREAM_CAPTURE_MODE_RELAXED && !pthread_equal(st->cap_thread, pthread_self())) {
        pthread_mutex_unlock(&mu);
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    int invalid = st->cap_invalid;
    uint64_t ns = st->cap_ns, mem = st->cap_mem;
    uncapture(st);
    pthread_mutex_unlock(&mu);
    *g = NULL;
    if (invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    struct CUgraph_st *x = malloc(sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    x->magic = GRAPH_MAGIC;
    x->ns = ns;
    x->mem = mem;
    *g = x;
    return CUDA_SUCCESS;
}

int fk_capture_alloc(CUstream s, uint64_t n)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return -1;
    pthread_mutex_lock(&mu);
    int capturing = st->capturing;
    if (capturing) st->cap_mem += n;
    pthread_mutex_unlock(&mu);
    return capturing;
}

CUresult cuStreamIsCapturing(CUstream s, int *status)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    pthread_mutex_lock(&mu);
    *status = !st->capturing ? CU_STREAM_CAPTURE_STATUS_NONE
              : st->cap_invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    pthread_mutex_unlock(&mu);
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags)
{
    (void)flags;
    if (!e || !g || g->magic != GRAPH_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    struct fexec *x = malloc(sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    *x = (struct fexec){g->ns, g->mem};
    *e = (CUgraphExec)x;
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(CUgraphExec e) { free(e); return CUDA_SUCCESS; }
CUresult cuGraphDestroy(CUgraph g)
{
    if (!g || g->magic != GRAPH_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    g->magic = 0;
    free(g);
    return CUDA_SUCCESS;
}

/* ---- launches ---- */
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = fm_kernel_load(m, name);
    if (r != CUDA_SUCCESS) return r;
    *f = !strcmp(name, "sleep_ns") ? &timed_fn : &plain_fn;
    return CUDA_SUCCESS;
}

static CUresult launch(CUstream s, uint64_t dur)
{
    CUresult err = CUDA_SUCCESS;
    struct CUstream_st *st = strm(s, &err);
    if (!st) return err;
    if (st->capturing) { /* recorded into the graph, runs nothing now */
        if (st->cap_invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        st->cap_ns += dur;
        return CUDA_SUCCESS;
    }
    __atomic_add_fetch(&fg_dev(fk_host(st->dev))->launches, 1, __ATOMIC_RELAXED);
    if (!dur) return CUDA_SUCCESS;
    return submit(st, dur, NULL);
}
static uint64_t kdur(CUfunction f, void **params)
{
    if (f && f->timed && params && params[0]) return *(uint64_t *)params[0];
    return fg.kernel_ns;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shm, CUstream s, void **params, void **extra)
{
    (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)extra;
    return launch(s, kdur(f, params));
}
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                             unsigned bz, unsigned shm, CUstream s, void **params, void **extra)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    (void)extra;
    return launch(c ? c->hStream : NULL, kdur(f, params));
}
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    return cuLaunchKernelEx(c, f, params, extra);
}
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shm, CUstream s, void **params)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, NULL);
}
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                        unsigned by, unsigned bz, unsigned shm, CUstream s, void **params)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, NULL);
}
/* The graph's memory nodes get their memory at launch, from the device's
 * graph memory pool (CUDA programming guide, "Graph memory nodes"). */
CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    const struct fexec *x = (const struct fexec *)g;
    if (x && x->mem) {
        int dev;
        uint64_t t;
        if (fk_stream(s, &dev, &t)) return CUDA_ERROR_INVALID_HANDLE;
        CUresult r = fm_graph_reserve(dev, x->mem);
        if (r != CUDA_SUCCESS) return r;
    }
    return launch(s, x ? x->ns : 0);
}
CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s) { return cuGraphLaunch(g, s); }

/* ---- events ---- */
CUresult cuEventCreate(CUevent *e, unsigned flags)
{
    (void)flags;
    CUresult r = fx_ctx_check(fk_ctx());
    if (r) return r;
    struct CUevent_st *x = calloc(1, sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    x->magic = EVENT_MAGIC;
    x->ctx = fk_ctx();
    x->lane = -1;
    pthread_mutex_lock(&mu);
    x->next = fk_ctx()->events;
    fk_ctx()->events = x;
    pthread_mutex_unlock(&mu);
    *e = x;
    return CUDA_SUCCESS;
}

static CUresult ev_check(CUevent e)
{
    if (!e || e->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    return fx_ctx_check(e->ctx) ? CUDA_ERROR_CONTEXT_IS_DESTROYED : CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e)
{
    CUresult r = ev_check(e);
    if (r) return r;
    pthread_mutex_lock(&mu);
    struct CUevent_st **pp = &e->ctx->events;
    while (*pp && *pp != e) pp = &(*pp)->next;
    if (*pp) *pp = e->next;
    e->magic = 0;
    pthread_mutex_unlock(&mu);
    free(e);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s)
{
    CUresult r = ev_check(e);
    if (r) return r;
    struct CUstream_st *st = strm(s, &r);
    if (!st) return r;
    if (st->ctx != e->ctx) return CUDA_ERROR_INVALID_HANDLE; /* events belong to one context */
    if (st->capturing) { /* becomes a node of the graph */
        if (st->cap_invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        e->recorded = 0;
        return CUDA_SUCCESS;
    }
    uint64_t seq;
    r = submit(st, 0, &seq);
    if (r) return r;
    e->lane = st->lane;
    e->seq = seq;
    e->recorded = 1;
    return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent e)
{
    CUresult r = ev_check(e);
    if (r) return r;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    uint64_t t;
    if (e->recorded && !fg_lane_query(e->lane, e->seq, &t)) return CUDA_ERROR_NOT_READY;
    return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent e)
{
    CUresult r = ev_check(e);
    if (r) return r;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (e->recorded) fg_lane_wait(e->lane, e->seq);
    fm_on_sync();
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b)
{
    CUresult r = ev_check(a);
    if (!r) r = ev_check(b);
    if (r) return r;
    if (prohibited()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    uint64_t ta, tb;
    if (!fg_lane_query(a->lane, a->seq, &ta) || !fg_lane_query(b->lane, b->seq, &tb)) return CUDA_ERROR_NOT_READY;
    if (!ta || !tb) return CUDA_ERROR_INVALID_HANDLE; /* too old: the engine forgot it */
    *ms = (float)((double)((int64_t)(tb - ta)) / 1e6);
    return CUDA_SUCCESS;
}
