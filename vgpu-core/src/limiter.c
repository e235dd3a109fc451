/* Compute-share limiter: a token bucket of GPU time per claim and device, in
 * the shared region, fed at the claim's share and drained by measured GPU
 * time. Launches are grouped into bursts; each burst is bracketed by two CUDA
 * events and charged its elapsed GPU time when the end event completes.
 * Until then each launch is charged provisionally by this process's running
 * estimate of GPU time per launch, and the difference is settled when the
 * measurement arrives, so the bucket tracks real time without waiting for
 * completion. Overuse leaves the bucket negative and is paid back in the
 * following windows (README "Compute limiter"). */
#define _GNU_SOURCE
#include "limiter.h"
#include "devices.h"
#include "dispatch.h"
#include "log.h"
#include "region.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int vgpu_lim_active;
static int lim_inited;

#define BURST_LAUNCHES 32             /* close a burst after this many launches */
#define BURST_NS 2000000              /* ...or this much estimated GPU time */
#define BURST_GAP_NS 20000            /* ...or when launches pause this long (see README) */
#define BUCKET_WINDOW_NS 100000000LL  /* the bucket holds at most share x 100 ms */
#define REFILL_MIN_NS 20000           /* refill at most every 20 us */
#define STATE_REREAD_NS 1000000000ull /* per-GPU reservation file: once a second */
#define MAX_PENDING 256
#define TL_STREAMS 4

/* Per process and device: the share in force and the estimate. */
struct lim_dev {
    int limited;         /* share < 100: this device is throttled */
    int share;           /* configured share, percent */
    int allow;           /* percent this claim may use now (policy, reservations) */
    int region_dev;
    uint64_t est_ns;     /* estimated GPU ns per launch (EMA of measurements) */
    uint64_t state_read_ns;
    struct vgpu_dev *dev;
};
static struct lim_dev ldev[64];
static int n_ldev;

/* A burst open on one stream of one thread. */
struct burst {
    CUstream stream;
    int used;            /* this slot belongs to `stream` */
    int open;
    int di;              /* index into ldev */
    unsigned n;          /* launches so far */
    uint64_t prov;       /* provisional charge so far */
    uint64_t last_ns;    /* CPU time of the previous launch */
    int eager;           /* launches are sparse: end the burst right after this launch */
    CUevent start;
};
static __thread struct burst tls[TL_STREAMS];
static __thread unsigned tls_next;
static __thread struct burst *cur_b; /* the burst of the launch in progress */

/* Bursts waiting for their end event, process-wide, oldest first. */
struct pending { CUevent start, end; int di; unsigned n; uint64_t prov; };
static struct pending pend[MAX_PENDING];
static unsigned pend_head, pend_len;
static pthread_mutex_t pend_mu = PTHREAD_MUTEX_INITIALIZER;

/* Recycled events per device (created in that device's context). */
#define EV_CACHE 64
static CUevent ev_free[64][EV_CACHE];
static int ev_nfree[64];

static CUevent ev_get(int di)
{
    CUevent e = NULL;
    pthread_mutex_lock(&pend_mu);
    if (ev_nfree[di]) e = ev_free[di][--ev_nfree[di]];
    pthread_mutex_unlock(&pend_mu);
    if (!e && REAL(cuEventCreate)(&e, CU_EVENT_DEFAULT) != CUDA_SUCCESS) e = NULL;
    return e;
}

/* call with pend_mu held */
static void ev_put_locked(int di, CUevent e)
{
    if (!e) return;
    if (ev_nfree[di] < EV_CACHE) ev_free[di][ev_nfree[di]++] = e;
    else REAL(cuEventDestroy_v2)(e);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct vgpu_region_device *rdev(struct lim_dev *l) { return &vgpu_region_get()->dev[l->region_dev]; }

/* Reservation file: "reserved=<sum of shares on this GPU>". */
static void read_state(struct lim_dev *l, uint64_t now)
{
    l->state_read_ns = now;
    int allow = l->share;
    if (vgpu_cfg.compute_policy == VGPU_POLICY_BESTEFFORT || l->share == 0) {
        int reserved = l->share;
        if (vgpu_cfg.gpu_state_dir[0]) {
            char path[700], line[128];
            snprintf(path, sizeof path, "%s/%s", vgpu_cfg.gpu_state_dir, l->dev->uuid);
            FILE *f = fopen(path, "re");
            if (f) {
                while (fgets(line, sizeof line, f))
                    if (!strncmp(line, "reserved=", 9)) reserved = atoi(line + 9);
                fclose(f);
            }
        }
        if (reserved < l->share) reserved = l->share;
        int other = reserved - l->share;
        allow = 100 - other > l->share ? 100 - other : l->share;
    }
    if (allow < 1) allow = 1; /* never starve completely: a share of 0 with a full GPU still progresses */
    if (allow > 100) allow = 100;
    if (allow != l->allow) LOG_INFO("%s: compute share %d%%, may use %d%%", l->dev->uuid, l->share, allow);
    __atomic_store_n(&l->allow, allow, __ATOMIC_RELAXED);
}

/* Add share x elapsed to the bucket, capped at share x window. */
static void refill(struct lim_dev *l, uint64_t now)
{
    struct vgpu_region_device *d = rdev(l);
    if (now - l->state_read_ns > STATE_REREAD_NS) read_state(l, now);
    uint64_t last = __atomic_load_n(&d->window_start_ns, __ATOMIC_RELAXED);
    /* `now` may be older than another thread's refill: never step back */
    if (last && (now <= last || now - last < REFILL_MIN_NS)) return;
    if (!__atomic_compare_exchange_n(&d->window_start_ns, &last, now, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return;
    int64_t cap = BUCKET_WINDOW_NS * l->allow / 100;
    int64_t add = last ? (int64_t)((now - last) * (uint64_t)l->allow / 100) : cap;
    int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_RELAXED), nt;
    do {
        nt = t + add;
        if (nt > cap) nt = cap;
        if (nt < t) nt = t; /* never lower it here */
    } while (!__atomic_compare_exchange_n(&d->tokens_ns, &t, nt, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
}

/* Settle completed bursts: replace provisional charges by measured time. */
/* Latest end event already charged, per device: bursts of several streams of
 * this process overlap on the GPU, and the overlap must be charged once. */
static CUevent covered_end[64];

static int64_t elapsed_ns(CUevent a, CUevent b, int *ok)
{
    float ms = 0;
    *ok = REAL(cuEventElapsedTime)(&ms, a, b) == CUDA_SUCCESS;
    return (int64_t)((double)ms * 1e6);
}

/* add delta to the bucket, never above its cap */
static void tokens_add(struct lim_dev *l, struct vgpu_region_device *d, int64_t delta)
{
    int64_t cap = BUCKET_WINDOW_NS * l->allow / 100;
    int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_RELAXED), nt;
    do {
        nt = t + delta;
        if (delta > 0 && nt > cap) nt = t > cap ? t : cap;
    } while (!__atomic_compare_exchange_n(&d->tokens_ns, &t, nt, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
}

/* Settle completed bursts: replace provisional charges by measured time. */
static void poll_pending(void)
{
    if (pthread_mutex_trylock(&pend_mu)) return;
    while (pend_len) {
        struct pending *p = &pend[pend_head];
        CUresult q = REAL(cuEventQuery)(p->end);
        if (q == CUDA_ERROR_NOT_READY) break;
        int ok = 0, ok2 = 0;
        int64_t ns = q == CUDA_SUCCESS ? elapsed_ns(p->start, p->end, &ok) : 0;
        if (!ok || ns < 0) ns = 0;
        int keep_end = ok;
        if (ok && covered_end[p->di]) {
            /* the part of this burst before the latest charged end was charged already */
            int64_t overlap = elapsed_ns(p->start, covered_end[p->di], &ok2);
            if (ok2 && overlap > 0) {
                if (overlap >= ns) { ns = 0; keep_end = 0; }
                else ns -= overlap;
            }
        }
        struct lim_dev *l = &ldev[p->di];
        struct vgpu_region_device *d = rdev(l);
        tokens_add(l, d, (int64_t)p->prov - ns);
        __atomic_add_fetch(&d->gpu_ns_total, (uint64_t)ns, __ATOMIC_RELAXED);
        if (p->n) {
            uint64_t per = (uint64_t)ns / p->n;
            l->est_ns = (l->est_ns * 3 + per) / 4;
            if (l->est_ns < 100) l->est_ns = 100;
        }
        ev_put_locked(p->di, p->start);
        if (keep_end) {
            ev_put_locked(p->di, covered_end[p->di]);
            covered_end[p->di] = p->end;
        } else {
            ev_put_locked(p->di, p->end);
        }
        pend_head = (pend_head + 1) % MAX_PENDING;
        pend_len--;
    }
    pthread_mutex_unlock(&pend_mu);
}

static void close_burst(struct burst *b)
{
    if (!b->open) return;
    b->open = 0;
    CUevent end = NULL;
    if (b->n && (end = ev_get(b->di)) && REAL(cuEventRecord)(end, b->stream) == CUDA_SUCCESS) {
        pthread_mutex_lock(&pend_mu);
        if (pend_len < MAX_PENDING) {
            pend[(pend_head + pend_len) % MAX_PENDING] = (struct pending){b->start, end, b->di, b->n, b->prov};
            pend_len++;
            pthread_mutex_unlock(&pend_mu);
            return;
        }
        pthread_mutex_unlock(&pend_mu);
    }
    /* could not measure: the provisional charge stands */
    pthread_mutex_lock(&pend_mu);
    ev_put_locked(b->di, end);
    ev_put_locked(b->di, b->start);
    pthread_mutex_unlock(&pend_mu);
}

static int lim_dev_index(void)
{
    CUdevice dev;
    if (REAL(cuCtxGetDevice)(&dev) != CUDA_SUCCESS || dev < 0 || dev >= n_ldev) return -1;
    return dev;
}

static struct burst *find_burst(CUstream s)
{
    for (int i = 0; i < TL_STREAMS; i++)
        if (tls[i].used && tls[i].stream == s) return &tls[i];
    /* reuse a slot: close whatever was open there */
    struct burst *b = &tls[tls_next++ % TL_STREAMS];
    close_burst(b);
    memset(b, 0, sizeof *b);
    b->stream = s;
    b->used = 1;
    return b;
}

static int burst_full(const struct burst *b, uint64_t now)
{
    return b->n >= BURST_LAUNCHES || b->prov >= BURST_NS || now - b->last_ns > BURST_GAP_NS;
}

/* Slow path: open a burst, or wait for the bucket. */
static void slow(struct burst *b, uint64_t now)
{
    if (!b->open) {
        int di = lim_dev_index();
        if (di < 0 || !ldev[di].limited) { b->di = -1; return; }
        /* a stream being captured into a graph runs nothing now: the graph
         * is charged when launched; and no events may go into the capture */
        int cap = 0;
        if (REAL(cuStreamIsCapturing)(b->stream, &cap) == CUDA_SUCCESS && cap) { b->di = -1; return; }
        b->di = di;
        b->n = 0;
        b->prov = 0;
        b->start = ev_get(di);
        if (!b->start || REAL(cuEventRecord)(b->start, b->stream) != CUDA_SUCCESS) {
            if (b->start) REAL(cuEventDestroy_v2)(b->start);
            b->start = NULL;
            b->di = -1;
            return;
        }
        b->open = 1;
    } else if (burst_full(b, now)) {
        int di = b->di;
        close_burst(b);
        b->di = di;
        slow(b, now);
        return;
    }
    struct lim_dev *l = &ldev[b->di];
    struct vgpu_region_device *d = rdev(l);
    refill(l, now);
    poll_pending();
    int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_SEQ_CST);
    if (t > 0) return;
    /* Out of budget: let the GPU see what we queued (so it is measured),
     * then sleep until the bucket refills. */
    int di = b->di;
    close_burst(b);
    uint64_t t0 = now;
    d->last_demand_ns = now;
    for (;;) {
        now = now_ns();
        refill(l, now);
        poll_pending();
        t = __atomic_load_n(&d->tokens_ns, __ATOMIC_SEQ_CST);
        if (t > 0) break;
        uint64_t wait = (uint64_t)(-t) * 100 / (uint64_t)l->allow;
        if (wait > 2000000) wait = 2000000;
        if (wait < 50000) wait = 50000;
        struct timespec ts = {0, (long)wait};
        nanosleep(&ts, NULL);
    }
    __atomic_add_fetch(&d->throttled_ns_total, now - t0, __ATOMIC_RELAXED);
    b->di = di;
    slow(b, now); /* open a new burst */
}

void vgpu_lim_before_launch(CUstream s)
{
    if (__builtin_expect(!lim_inited, 0)) {
        vgpu_lim_after_init();
        if (!vgpu_lim_active) return;
    }
    struct burst *b = find_burst(s);
    uint64_t now = now_ns(); /* vDSO, no system call */
    cur_b = NULL;
    /* Sparse launches: a neighbour's work may be queued between them, so
     * such a launch is measured alone, its end event recorded right after it. */
    b->eager = b->last_ns && now - b->last_ns > BURST_GAP_NS;
    if (__builtin_expect(!b->open || burst_full(b, now), 0)) {
        slow(b, now);
        if (!b->open) return; /* device not limited */
        now = now_ns();
    } else {
        /* the common path: one shared load and compare */
        struct vgpu_region_device *d = rdev(&ldev[b->di]);
        if (__builtin_expect(__atomic_load_n(&d->tokens_ns, __ATOMIC_RELAXED) <= 0, 0)) {
            slow(b, now);
            if (!b->open) return;
            now = now_ns();
        }
    }
    struct lim_dev *l = &ldev[b->di];
    b->last_ns = now;
    cur_b = b;
    b->n++;
    b->prov += l->est_ns;
    __atomic_sub_fetch(&rdev(l)->tokens_ns, (int64_t)l->est_ns, __ATOMIC_RELAXED);
}

void vgpu_lim_after_launch(CUstream s, CUresult r)
{
    (void)s;
    struct burst *b = cur_b;
    if (!b) return;
    cur_b = NULL;
    if (__builtin_expect(r == CUDA_SUCCESS, 1)) {
        if (__builtin_expect(b->eager, 0)) {
            int di = b->di;
            close_burst(b);
            b->di = di;
        }
        return;
    }
    /* a refused launch costs nothing: undo its provisional charge */
    if (!b->open || !b->n) return;
    struct lim_dev *l = &ldev[b->di];
    b->n--;
    b->prov -= l->est_ns;
    __atomic_add_fetch(&rdev(l)->tokens_ns, (int64_t)l->est_ns, __ATOMIC_RELAXED);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void)
{
    if (!vgpu_cfg.sm_any) { __atomic_store_n(&vgpu_lim_active, 0, __ATOMIC_RELEASE); lim_inited = 1; return; }
    int any = 0;
    for (int i = 0; i < 64; i++) {
        struct vgpu_dev *d = vgpu_dev_by_ordinal(i);
        if (!d) break;
        n_ldev = i + 1;
        struct lim_dev *l = &ldev[i];
        l->dev = d;
        l->share = d->sm_limit;
        l->limited = d->sm_limit < 100;
        l->est_ns = 20000;
        if (!l->limited) continue;
        l->region_dev = vgpu_dev_region_index(d);
        if (l->region_dev < 0) { l->limited = 0; continue; }
        read_state(l, now_ns());
        vgpu_region_get()->dev[l->region_dev].sm_limit = (uint32_t)l->share;
        any = 1;
    }
    __atomic_store_n(&vgpu_lim_active, any, __ATOMIC_RELEASE);
    __atomic_store_n(&lim_inited, 1, __ATOMIC_RELEASE);
}

void vgpu_lim_after_init(void) { pthread_once(&init_once, init); }
void vgpu_lim_config(void) { vgpu_lim_active = vgpu_cfg.sm_any; }
