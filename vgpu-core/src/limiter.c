/* Compute-share limiter: a token bucket of GPU time per claim and device, in
 * the shared region, fed at the claim's share and drained by the claim's GPU
 * time (README "Compute limiter").
 *  - Launches are grouped into bursts per context and stream. A burst has a
 *    start event, recorded before its first launch, and an end event,
 *    re-recorded after every launch, so the burst ends where its last kernel
 *    ends, never where the next launch after a pause comes (idle time is not
 *    GPU time).
 *  - Each launch is charged provisionally (this process's running estimate
 *    of GPU time per launch); when the end event completes the burst is
 *    settled with its measured time.
 *  - A time-slicing GPU interleaves other contexts' kernels with the burst,
 *    so event time over-states the claim's own time by however much the
 *    GPU interleaved. The driver's own per-process accounting
 *    (nvmlDeviceGetProcessUtilization, which the container can read but not
 *    forge) corrects it: every NVML sample period the charge made from events
 *    is replaced by the time NVML attributes to this process, and NVML's
 *    ratio to event time and its time per launch estimate the next
 *    settlements (see poll_pending). NVML names processes by host
 *    PID; this process's is found once, by allocating two probe buffers of
 *    distinct sizes and finding the one process whose memory moved by exactly
 *    them (nvproc.c).
 *  - Nothing here runs a potentially unsafe call where a stream capture could
 *    see it: event polling runs in the relaxed capture mode, events are never
 *    recorded into a capturing stream, and launches into a capture are not
 *    charged (the graph's launches are).
 *  - Handles: events come from a pool per context; cuStreamDestroy,
 *    cuCtxDestroy and the primary context's reset or last release make the
 *    limiter forget every handle of what is destroyed, in every thread. */
#define _GNU_SOURCE
#include "limiter.h"
#include "devices.h"
#include "dispatch.h"
#include "log.h"
#include "nvproc.h"
#include "region.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int vgpu_lim_active;
static int lim_inited;

#define BURST_LAUNCHES 32             /* close a burst after this many launches */
#define BURST_NS 2000000              /* ...or this much estimated GPU time */
#define BURST_GAP_NS 20000            /* ...or when launches pause this long */
#define BUCKET_WINDOW_NS 100000000LL  /* the bucket holds at most share x 100 ms */
#define REFILL_MIN_NS 20000           /* refill at most every 20 us */
#define STATE_REREAD_NS 1000000000ull /* per-GPU reservation file: once a second */
#define NVML_POLL_NS 40000000ull      /* read NVML's per-process samples at most this often */
#define NVML_PERIOD_US 166667ull      /* NVML's sample period until measured (1/6 s on recent GPUs) */
#define INFLIGHT_NS 8000000LL         /* admitted but not yet settled GPU time, per process and device: the least bound */
#define INFLIGHT_MAX_NS 250000000LL   /* ...and the most, however deep the queue ahead is (see adapt_inflight) */
#define MAX_PENDING 256
#define TL_STREAMS 4
#define MAX_CTX 64
#define EV_CACHE 64
#define CKPT 2048
#define QHIST 60                      /* sample periods the lowest ratio is kept over (10 s) */
#define LHIST 6                       /* NVML sample periods the time per launch is learnt over */
#define MAX_THREADS 1024

/* Running totals of settled bursts, per device (the NVML correction compares
 * a sample period's difference of them with NVML's figure). */
struct ck_sums {
    uint64_t charged, evt, nl; /* ns charged from events, raw event ns, launches */
    uint64_t by_r, by_l;       /* ns of each estimate (ratio, per launch; settle_estimate) */
};

/* Per process and device: the share in force, the estimate, the NVML state. */
struct lim_dev {
    int limited;         /* share < 100: this device is throttled */
    int share;           /* configured share, percent */
    int allow;           /* percent this claim may use now (policy, reservations) */
    int region_dev;
    uint64_t est_ns;     /* provisional GPU ns per launch (EMA of settled bursts) */
    int64_t inflight;    /* provisional ns of bursts not settled yet (atomic) */
    int64_t inflight_cap; /* bound on inflight (atomic; adapt_inflight) */
    uint64_t inf_wait_ns; /* time launches waited on that bound alone (atomic) */
    uint64_t inf_wait_seen; /* ...up to the last adaptation (pend_mu) */
    uint64_t state_read_ns;
    struct vgpu_dev *dev;
    /* NVML correction, under pend_mu */
    int nv_state;                  /* 0 not tried, 1 in use, -1 unavailable */
    nvmlDevice_t nvh;
    unsigned hostpid;
    unsigned long long nv_last_us; /* newest sample timestamp seen */
    unsigned long long nv_period_us;
    int nv_seen, nv_learned;       /* a sample was seen; gaps between samples seen */
    unsigned long long nv_min_gap;
    uint64_t nv_next_poll, rec_t;  /* reconciled up to rec_t (CLOCK_MONOTONIC) */
    double ratio;                  /* NVML's time / event time, smoothed */
    double qh[QHIST];              /* ...per sample period, the last QHIST of them */
    unsigned qh_n;
    double ratio_min;              /* ...the lowest of those */
    struct ck_sums sum;            /* running totals since NVML is in use */
    double err_r, err_l;           /* each estimate's recent error against NVML, ns per period, smoothed */
    double per_launch;             /* NVML's time per settled launch over LHIST periods (0: not known yet) */
    struct { uint64_t own, n; } lh[LHIST];
    unsigned lh_n;
    struct { uint64_t t; struct ck_sums sum; } ck[CKPT]; /* the totals as each burst settled */
    unsigned ck_n;
};
static struct lim_dev ldev[64];
static int n_ldev;

/* A burst open on one stream of one context, in one thread. */
struct burst {
    CUcontext ctx;       /* key for the default streams (per context), else NULL */
    CUstream stream;
    CUcontext octx;      /* the context it was opened in */
    int used, open;
    int dead;            /* set by another thread: the stream or context was destroyed */
    int ctx_dead;        /* ...the context: its events are gone with it */
    int di, ci;          /* ldev and lctx indices */
    unsigned n;          /* launches so far */
    unsigned epoch;      /* capture epoch seen when the stream was last checked */
    uint64_t prov;       /* provisional charge so far */
    uint64_t last_ns;    /* CPU time of the previous launch */
    CUevent start, end;
};
static __thread struct burst tls[TL_STREAMS];
static __thread unsigned tls_next;
static __thread struct burst *cur_b; /* the burst of the launch in progress */
static __thread int tls_registered;

/* Every thread's bursts, so that a destroy in one thread reaches them all. */
static struct burst *threads[MAX_THREADS];
static pthread_mutex_t threads_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t thread_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static unsigned capture_epoch; /* bumped at every cuStreamBeginCapture */

/* Bursts waiting for their end event, process-wide, oldest first. */
struct pending { CUevent start, end; int di, ci; unsigned n; uint64_t prov; };
static struct pending pend[MAX_PENDING];
static unsigned pend_head, pend_len;
static pthread_mutex_t pend_mu = PTHREAD_MUTEX_INITIALIZER;

/* Per context: recycled events (an event belongs to its context) and the
 * latest end event already charged. Under pend_mu. */
struct lim_ctx {
    CUcontext ctx;
    int di;
    int nfree;
    CUevent free[EV_CACHE];
    CUevent covered_end;
};
static struct lim_ctx lctx[MAX_CTX];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct vgpu_region_device *rdev(struct lim_dev *l) { return &vgpu_region_get()->dev[l->region_dev]; }

/* Potentially unsafe calls (event queries) run in the relaxed capture
 * interaction mode: a capture open in this or another thread is neither
 * refused nor invalidated by them (CUDA's cuThreadExchangeStreamCaptureMode). */
static int relax_begin(void)
{
    int m = CU_STREAM_CAPTURE_MODE_RELAXED;
    return REAL(cuThreadExchangeStreamCaptureMode)(&m) == CUDA_SUCCESS ? m : -1;
}
static void relax_end(int m)
{
    if (m >= 0) REAL(cuThreadExchangeStreamCaptureMode)(&m);
}

/* ---- contexts and their events (pend_mu held) ---- */
static int ctx_index_locked(CUcontext c, int di)
{
    int freeslot = -1;
    for (int i = 0; i < MAX_CTX; i++) {
        if (lctx[i].ctx == c) return i;
        if (!lctx[i].ctx && freeslot < 0) freeslot = i;
    }
    if (freeslot >= 0) {
        memset(&lctx[freeslot], 0, sizeof lctx[freeslot]);
        lctx[freeslot].ctx = c;
        lctx[freeslot].di = di;
    }
    return freeslot;
}

/* An event of the current context (ci's). */
static CUevent ev_get(int ci)
{
    CUevent e = NULL;
    pthread_mutex_lock(&pend_mu);
    if (lctx[ci].nfree) e = lctx[ci].free[--lctx[ci].nfree];
    pthread_mutex_unlock(&pend_mu);
    if (!e && REAL(cuEventCreate)(&e, CU_EVENT_DEFAULT) != CUDA_SUCCESS) e = NULL;
    return e;
}

static void ev_put_locked(int ci, CUevent e)
{
    if (!e) return;
    if (lctx[ci].nfree < EV_CACHE) lctx[ci].free[lctx[ci].nfree++] = e;
    else REAL(cuEventDestroy_v2)(e);
}

/* ---- the bucket ---- */

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

/* Add delta to the bucket; a positive one never lifts it above its cap
 * unless `uncapped` (a correction of charges already made, not new budget). */
static void tokens_add(struct lim_dev *l, struct vgpu_region_device *d, int64_t delta, int uncapped)
{
    int64_t cap = BUCKET_WINDOW_NS * l->allow / 100;
    int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_RELAXED), nt;
    do {
        nt = t + delta;
        if (!uncapped && delta > 0 && nt > cap) nt = t > cap ? t : cap;
    } while (!__atomic_compare_exchange_n(&d->tokens_ns, &t, nt, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
}

/* This process has as much admitted, unsettled work on the device as its
 * in-flight bound allows (adapt_inflight). */
static inline int inflight_full(struct lim_dev *l)
{
    return __atomic_load_n(&l->inflight, __ATOMIC_RELAXED) >= __atomic_load_n(&l->inflight_cap, __ATOMIC_RELAXED);
}

/* ---- NVML: this process's own GPU time (pend_mu held) ---- */

static void nv_setup(struct lim_dev *l)
{
    int r = vgpu_nvproc_find(l->dev, &l->nvh, &l->hostpid);
    l->nv_state = r == VGPU_NVPROC_LATER ? 0 : -1; /* LATER: asked again at a later burst */
    if (r == VGPU_NVPROC_UNKNOWN) LOG_WARN("%s: compute time measured by events only", l->dev->uuid);
    if (r != VGPU_NVPROC_OK) return;
    l->ratio = 1.0;
    l->rec_t = now_ns();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    l->nv_last_us = (unsigned long long)rt.tv_sec * 1000000ull + (unsigned long long)rt.tv_nsec / 1000;
    l->nv_period_us = NVML_PERIOD_US; /* until two samples tell */
    l->nv_state = 1;
}

/* The in-flight bound, once per NVML sample read (pend_mu held). A short
 * queue keeps a capped claim from holding the GPU once its budget is spent,
 * but the queue needed to reach a share is share x the time from launch to
 * completion (Little's law), and that time includes whatever other
 * contexts queued ahead: a GPU that runs work in submission order behind a
 * neighbour keeping 64 ms queued gave a 30% claim 11.8% with an 8 ms
 * bound. So the bound grows (x1.25) in a sample period in which launches
 * waited on it alone while NVML saw the process below its allowance, and
 * shrinks back (x15/16, to 8 ms at least) in one in which they never
 * waited on it. Under a GPU that alternates or time-slices contexts the
 * claim reaches its share with the least bound, so it stays there. */
static void adapt_inflight(struct lim_dev *l, unsigned own_pct)
{
    uint64_t w = __atomic_load_n(&l->inf_wait_ns, __ATOMIC_RELAXED), waited = w - l->inf_wait_seen;
    l->inf_wait_seen = w;
    int allow = __atomic_load_n(&l->allow, __ATOMIC_RELAXED);
    int64_t old = __atomic_load_n(&l->inflight_cap, __ATOMIC_RELAXED), cap = old, most = INFLIGHT_MAX_NS * allow / 100;
    if (most < INFLIGHT_NS) most = INFLIGHT_NS;
    if (waited > l->nv_period_us * 100 && (int)own_pct + 1 < allow) /* waited > 10% of a period */
        cap = cap + cap / 4 < most ? cap + cap / 4 : most;
    else if (!waited)
        cap = cap - cap / 16 > INFLIGHT_NS ? cap - cap / 16 : INFLIGHT_NS;
    if (cap == old) return;
    LOG_DEBUG("%s: in-flight bound %lld us (NVML %u%%, waited on it %llu us)", l->dev->uuid, (long long)cap / 1000,
              own_pct, (unsigned long long)waited / 1000);
    __atomic_store_n(&l->inflight_cap, cap, __ATOMIC_RELAXED);
}

/* The totals of settled bursts up to monotonic time t. */
static struct ck_sums ck_at(struct lim_dev *l, uint64_t t)
{
    for (unsigned k = 0; k < CKPT && k < l->ck_n; k++) {
        unsigned i = (l->ck_n - 1 - k) % CKPT;
        if (l->ck[i].t <= t) return l->ck[i].sum;
    }
    return (struct ck_sums){0};
}

/* Replace the charges made from events over each completed NVML sample
 * period by the GPU time NVML attributes to this process in it. */
static void nv_poll(struct lim_dev *l, uint64_t now)
{
    if (l->nv_state != 1 || now < l->nv_next_poll) return;
    l->nv_next_poll = now + NVML_POLL_NS;
    nvmlProcessUtilizationSample_t s[256];
    unsigned n = 256;
    nvmlReturn_t r = REAL(nvmlDeviceGetProcessUtilization)(l->nvh, s, &n, l->nv_last_us);
    if (r == NVML_ERROR_NOT_FOUND) n = 0;
    else if (r != NVML_SUCCESS) return;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    uint64_t rt_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec, mono = now_ns();
    int reconciled = 0;
    unsigned last_own = 0;
    for (;;) {
        /* the oldest sample time not handled yet, and this process's share of it */
        unsigned long long ts = 0;
        for (unsigned i = 0; i < n; i++)
            if (s[i].timeStamp > l->nv_last_us && (!ts || s[i].timeStamp < ts)) ts = s[i].timeStamp;
        if (!ts) break;
        unsigned own = 0;
        for (unsigned i = 0; i < n; i++)
            if (s[i].timeStamp == ts && s[i].pid == l->hostpid) own += s[i].smUtil;
        if (l->nv_seen) { /* consecutive samples are a period apart, or several when the GPU idled */
            unsigned long long d = ts - l->nv_last_us;
            if (d < 10000) { l->nv_last_us = ts; continue; } /* the same period again, its time stamp moved */
            if (!l->nv_min_gap || d < l->nv_min_gap) l->nv_min_gap = d;
            if (++l->nv_learned >= 3) l->nv_period_us = l->nv_min_gap; /* the smallest of a few gaps */
        }
        l->nv_seen = 1;
        uint64_t t_end = ts * 1000 + mono - rt_ns; /* sample time on the monotonic clock */
        if (t_end > l->rec_t) {
            /* only this sample's period is replaced: charges older than it
             * whose samples were never read (NVML keeps a few seconds of
             * them, and nothing polls while the claim launches nothing) stand */
            uint64_t p_ns = l->nv_period_us * 1000, from = t_end - p_ns > l->rec_t ? t_end - p_ns : l->rec_t;
            struct ck_sums a = ck_at(l, from), b = ck_at(l, t_end);
            uint64_t c0 = a.charged, e0 = a.evt, n0 = a.nl, c1 = b.charged, e1 = b.evt, n1 = b.nl;
            uint64_t o = (uint64_t)own * l->nv_period_us * 10; /* percent of a period, in ns */
            struct vgpu_region_device *d = rdev(l);
            tokens_add(l, d, (int64_t)(c1 - c0) - (int64_t)o, 1);
            __atomic_add_fetch(&d->gpu_ns_total, o, __ATOMIC_RELAXED);
            if (e1 - e0 > 1000000) { /* enough event time to learn the ratio from */
                double q = (double)o / (double)(e1 - e0);
                if (q > 1) q = 1;
                if (q < 0.001) q = 0.001;
                /* smoothed against NVML's 1-point steps, but a change of
                 * the interleaving (a neighbour starts or stops) is taken at
                 * once: a stale ratio over- or under-charges every burst
                 * until it is learnt, and the refund comes a period late */
                if (q < 0.75 * l->ratio || q > 1.33 * l->ratio) l->ratio = q;
                else l->ratio = 0.5 * l->ratio + 0.5 * q;
                l->qh[l->qh_n++ % QHIST] = q;
                l->ratio_min = 1;
                for (unsigned k = 0; k < QHIST && k < l->qh_n; k++)
                    if (l->qh[k] < l->ratio_min) l->ratio_min = l->qh[k];
            }
            /* which estimate (settle_estimate) erred less lately */
            double er = (double)(b.by_r - a.by_r) - (double)o, el = (double)(b.by_l - a.by_l) - (double)o;
            if (er < 0) er = -er;
            if (el < 0) el = -el;
            l->err_r = 0.5 * l->err_r + 0.5 * er;
            l->err_l = 0.5 * l->err_l + 0.5 * el;
            /* time per launch over the last second: a burst settles after the
             * period it ran in, so one period's launches are too few to tell */
            if (l->per_launch > 0 && n1 - n0 >= 8) {
                /* the kernels changed size (a new phase of the workload):
                 * the last second's mean would mischarge for a second; the
                 * last period alone is right at once */
                double p1 = (double)o / (double)(n1 - n0);
                if (p1 < 0.5 * l->per_launch || p1 > 2 * l->per_launch) l->lh_n = 0, memset(l->lh, 0, sizeof l->lh);
            }
            l->lh[l->lh_n % LHIST].own = o;
            l->lh[l->lh_n % LHIST].n = n1 - n0;
            l->lh_n++;
            uint64_t so = 0, sn = 0;
            for (unsigned k = 0; k < LHIST && k < l->lh_n; k++) { so += l->lh[k].own; sn += l->lh[k].n; }
            if (sn >= 8 && so) l->per_launch = (double)so / (double)sn;
            LOG_DEBUG("%s: NVML period: own %u%% = %llu us, err r %.0f l %.0f us, charged %llu us from %llu us of events, ratio %.2f, tokens %lld us",
                      l->dev->uuid, own, (unsigned long long)o / 1000, l->err_r / 1000, l->err_l / 1000, (unsigned long long)(c1 - c0) / 1000,
                      (unsigned long long)(e1 - e0) / 1000, l->ratio, (long long)d->tokens_ns / 1000);
            l->rec_t = t_end;
            reconciled = 1;
            last_own = own;
        }
        l->nv_last_us = ts;
    }
    if (reconciled) adapt_inflight(l, last_own);
}

/* ---- settling ---- */

static int64_t elapsed_ns(CUevent a, CUevent b, int *ok)
{
    float ms = 0;
    *ok = REAL(cuEventElapsedTime)(&ms, a, b) == CUDA_SUCCESS;
    return (int64_t)((double)ms * 1e6);
}

/* The claim's own part of a burst's event time (ns, n launches), pend_mu
 * held. Event time bounds it from above: other contexts' work interleaved
 * inside the burst only adds to it. NVML's figures give two estimates below
 * that: event time x NVML's ratio, right while the interleaving stays as it
 * was, and launches x NVML's time per launch, right while the kernels stay
 * as they were. A time-slicing GPU changes the interleaving all the time
 * (a 10% claim's bursts run alone for seconds, then stretched eight times
 * by its neighbours', then alone again), and the ratio learnt in the last
 * period then over- or under-charges for a period or more: its 1 s windows
 * dipped to 83-86% of the share. So the estimate that erred less against
 * NVML over the last periods is used, and the time per launch whenever it
 * says more than twice the ratio's (a neighbour paused: the burst runs
 * alone, and the ratio learnt while it was interleaved would under-charge
 * it several times over). Never below event time x the lowest ratio of
 * the last 10 s: kernels that suddenly grew would otherwise run nearly free
 * on the old time per launch until NVML tells. The NVML correction settles
 * the rest every sample period. */
static uint64_t settle_estimate(struct lim_dev *l, double ns, unsigned n)
{
    double by_ratio = ns * l->ratio, by_launches = n * l->per_launch;
    if (by_ratio > ns) by_ratio = ns;
    if (by_launches > ns) by_launches = ns;
    l->sum.by_r += (uint64_t)by_ratio;
    l->sum.by_l += (uint64_t)by_launches;
    double c = by_launches > 2 * by_ratio || l->err_l < l->err_r ? by_launches : by_ratio;
    if (c < ns * l->ratio_min) c = ns * l->ratio_min;
    return (uint64_t)c;
}

/* Settle completed bursts: replace provisional charges by measured time. */
static void poll_pending(void)
{
    if (pthread_mutex_trylock(&pend_mu)) return;
    int mode = relax_begin();
    uint64_t now = now_ns();
    while (pend_len) {
        struct pending *p = &pend[pend_head];
        CUresult q = REAL(cuEventQuery)(p->end);
        if (q == CUDA_ERROR_NOT_READY) break;
        struct lim_ctx *c = &lctx[p->ci];
        int ok = 0, ok2 = 0;
        int64_t ns = q == CUDA_SUCCESS ? elapsed_ns(p->start, p->end, &ok) : 0;
        if (!ok || ns < 0) ns = 0;
        int keep_end = ok;
        if (ok && c->covered_end) {
            /* the part of this burst before the latest charged end was charged already */
            int64_t overlap = elapsed_ns(p->start, c->covered_end, &ok2);
            if (ok2 && overlap > 0) {
                if (overlap >= ns) { ns = 0; keep_end = 0; }
                else ns -= overlap;
            }
        }
        struct lim_dev *l = &ldev[p->di];
        struct vgpu_region_device *d = rdev(l);
        uint64_t charge = (uint64_t)ns;
        if (l->nv_state == 1) {
            if (l->per_launch > 0) charge = settle_estimate(l, (double)ns, p->n);
            l->sum.charged += charge;
            l->sum.evt += (uint64_t)ns;
            l->sum.nl += p->n;
            l->ck[l->ck_n % CKPT].t = now;
            l->ck[l->ck_n % CKPT].sum = l->sum;
            l->ck_n++;
        } else {
            __atomic_add_fetch(&d->gpu_ns_total, (uint64_t)ns, __ATOMIC_RELAXED);
        }
        tokens_add(l, d, (int64_t)p->prov - (int64_t)charge, 0);
        __atomic_sub_fetch(&l->inflight, (int64_t)p->prov, __ATOMIC_RELAXED);
        if (p->n) {
            uint64_t per = charge / p->n;
            l->est_ns = (l->est_ns * 3 + per) / 4;
            if (l->est_ns < 100) l->est_ns = 100;
        }
        ev_put_locked(p->ci, p->start);
        if (keep_end) {
            ev_put_locked(p->ci, c->covered_end);
            c->covered_end = p->end;
        } else {
            ev_put_locked(p->ci, p->end);
        }
        pend_head = (pend_head + 1) % MAX_PENDING;
        pend_len--;
    }
    for (int i = 0; i < n_ldev; i++)
        if (ldev[i].limited) nv_poll(&ldev[i], now);
    relax_end(mode);
    pthread_mutex_unlock(&pend_mu);
}

/* The burst's end event was recorded after its last launch: queue it for
 * settling. */
static void close_burst(struct burst *b)
{
    if (!b->open) return;
    b->open = 0;
    pthread_mutex_lock(&pend_mu);
    if (b->n && b->end && pend_len < MAX_PENDING) {
        pend[(pend_head + pend_len) % MAX_PENDING] = (struct pending){b->start, b->end, b->di, b->ci, b->n, b->prov};
        pend_len++;
    } else { /* could not measure: the provisional charge stands */
        ev_put_locked(b->ci, b->end);
        ev_put_locked(b->ci, b->start);
        if (b->di >= 0) __atomic_sub_fetch(&ldev[b->di].inflight, (int64_t)b->prov, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&pend_mu);
    b->start = b->end = NULL;
}

/* A burst whose stream or context another thread destroyed. */
static void drop_dead(struct burst *b)
{
    if (__atomic_load_n(&b->ctx_dead, __ATOMIC_ACQUIRE)) {
        if (b->open && b->di >= 0) __atomic_sub_fetch(&ldev[b->di].inflight, (int64_t)b->prov, __ATOMIC_RELAXED);
        b->start = b->end = NULL; /* destroyed with their context */
        b->open = 0;
    } else {
        close_burst(b); /* its events still complete: settle it */
    }
    memset(b, 0, sizeof *b);
}

/* ---- bursts of this thread ---- */

static void thread_gone(void *p)
{
    pthread_mutex_lock(&threads_mu);
    for (int i = 0; i < MAX_THREADS; i++)
        if (threads[i] == p) threads[i] = NULL;
    pthread_mutex_unlock(&threads_mu);
}
static void make_key(void) { pthread_key_create(&thread_key, thread_gone); }

static void register_thread(void)
{
    tls_registered = 1;
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&threads_mu);
    for (int i = 0; i < MAX_THREADS; i++)
        if (!threads[i]) { threads[i] = tls; break; }
    pthread_mutex_unlock(&threads_mu);
    pthread_setspecific(thread_key, tls);
}

static struct burst *find_burst(CUcontext c, CUstream s)
{
    if (__builtin_expect(!tls_registered, 0)) register_thread();
    for (int i = 0; i < TL_STREAMS; i++) {
        struct burst *b = &tls[i];
        if (b->used && b->stream == s && b->ctx == c) {
            if (__builtin_expect(__atomic_load_n(&b->dead, __ATOMIC_ACQUIRE), 0)) break;
            return b;
        }
    }
    for (int i = 0; i < TL_STREAMS; i++)
        if (tls[i].used && __atomic_load_n(&tls[i].dead, __ATOMIC_ACQUIRE)) drop_dead(&tls[i]);
    /* reuse a slot: close whatever was open there */
    struct burst *b = NULL;
    for (int i = 0; i < TL_STREAMS && !b; i++)
        if (!tls[i].used) b = &tls[i];
    if (!b) {
        b = &tls[tls_next++ % TL_STREAMS];
        close_burst(b);
    }
    memset(b, 0, sizeof *b);
    b->ctx = c;
    b->stream = s;
    b->di = -1;
    b->used = 1;
    return b;
}

static int burst_full(const struct burst *b, uint64_t now)
{
    return b->n >= BURST_LAUNCHES || b->prov >= BURST_NS || now - b->last_ns > BURST_GAP_NS;
}

/* A stream being captured into a graph runs nothing now (the graph is
 * charged when launched), and no event may go into the capture. */
static int stream_capturing(CUstream s)
{
    int cap = 0;
    return REAL(cuStreamIsCapturing)(s, &cap) != CUDA_SUCCESS || cap;
}

/* Open a burst on the current context's stream: -1 if not throttled here
 * (device not limited, stream capturing, no events). */
static int open_burst(struct burst *b)
{
    CUdevice dev;
    b->di = -1;
    if (REAL(cuCtxGetDevice)(&dev) != CUDA_SUCCESS || dev < 0 || dev >= n_ldev || !ldev[dev].limited) return -1;
    if (REAL(cuCtxGetCurrent)(&b->octx) != CUDA_SUCCESS || !b->octx) return -1;
    b->epoch = __atomic_load_n(&capture_epoch, __ATOMIC_ACQUIRE);
    if (stream_capturing(b->stream)) return -1;
    pthread_mutex_lock(&pend_mu);
    int ci = ctx_index_locked(b->octx, dev);
    if (ldev[dev].nv_state == 0) nv_setup(&ldev[dev]);
    pthread_mutex_unlock(&pend_mu);
    if (ci < 0) return -1;
    b->ci = ci;
    b->start = ev_get(ci);
    b->end = ev_get(ci);
    if (!b->start || !b->end || REAL(cuEventRecord)(b->start, b->stream) != CUDA_SUCCESS) {
        pthread_mutex_lock(&pend_mu);
        ev_put_locked(ci, b->start);
        ev_put_locked(ci, b->end);
        pthread_mutex_unlock(&pend_mu);
        b->start = b->end = NULL;
        return -1;
    }
    b->di = dev;
    b->n = 0;
    b->prov = 0;
    b->open = 1;
    return 0;
}

/* Wait while the bucket is empty or too much is in flight. This thread's
 * open bursts (other streams too) are closed first: what they admitted must
 * be measured and settled, or it would stay in flight while we wait. */
static void wait_budget(struct lim_dev *l, uint64_t now)
{
    for (int i = 0; i < TL_STREAMS; i++) {
        if (!tls[i].used) continue;
        if (__atomic_load_n(&tls[i].dead, __ATOMIC_ACQUIRE)) drop_dead(&tls[i]);
        else close_burst(&tls[i]);
    }
    struct vgpu_region_device *d = rdev(l);
    uint64_t t0 = now;
    d->last_demand_ns = now;
    for (;;) {
        refill(l, now);
        poll_pending();
        int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_SEQ_CST);
        if (t > 0 && !inflight_full(l)) break;
        uint64_t wait = t > 0 ? 100000 : (uint64_t)(-t) * 100 / (uint64_t)l->allow;
        if (wait > 2000000) wait = 2000000;
        if (wait < 50000) wait = 50000;
        struct timespec ts = {0, (long)wait};
        nanosleep(&ts, NULL);
        uint64_t after = now_ns();
        if (t > 0) __atomic_add_fetch(&l->inf_wait_ns, after - now, __ATOMIC_RELAXED); /* budget left: the bound held it */
        now = after;
    }
    if (now > t0) __atomic_add_fetch(&d->throttled_ns_total, now - t0, __ATOMIC_RELAXED);
}

/* Slow path: (re)open the burst, wait for budget. */
static void slow(struct burst *b, uint64_t now)
{
    if (b->open && (burst_full(b, now) || b->epoch != __atomic_load_n(&capture_epoch, __ATOMIC_ACQUIRE)))
        close_burst(b);
    int di = b->di;
    if (!b->open && di >= 0 && !stream_capturing(b->stream)) {
        /* settle what completed, and wait first if the budget is spent, so
         * that what was queued is measured before more is admitted (never
         * for a launch into a capture: the claim may be in debt then, and
         * the capture would wait for it) */
        struct lim_dev *l = &ldev[di];
        refill(l, now);
        poll_pending();
        if (__atomic_load_n(&rdev(l)->tokens_ns, __ATOMIC_SEQ_CST) <= 0 || inflight_full(l)) wait_budget(l, now);
    }
    if (!b->open && open_burst(b)) return;
    struct lim_dev *l = &ldev[b->di];
    refill(l, now);
    if (__atomic_load_n(&rdev(l)->tokens_ns, __ATOMIC_SEQ_CST) > 0 && !inflight_full(l)) return;
    close_burst(b);
    wait_budget(l, now_ns());
    open_burst(b);
}

void vgpu_lim_before_launch(CUstream s)
{
    if (__builtin_expect(!lim_inited, 0)) {
        vgpu_lim_after_init();
        if (!vgpu_lim_active) return;
    }
    /* the default streams are per context */
    CUcontext c = NULL;
    if (!s || s == (CUstream)1 || s == CU_STREAM_PER_THREAD) REAL(cuCtxGetCurrent)(&c);
    struct burst *b = find_burst(c, s);
    uint64_t now = now_ns(); /* vDSO, no system call */
    cur_b = NULL;
    if (__builtin_expect(!b->open || burst_full(b, now) ||
                             b->epoch != __atomic_load_n(&capture_epoch, __ATOMIC_RELAXED) ||
                             __atomic_load_n(&rdev(&ldev[b->di])->tokens_ns, __ATOMIC_RELAXED) <= 0 ||
                             inflight_full(&ldev[b->di]),
                         0)) {
        if (b->open && b->epoch != __atomic_load_n(&capture_epoch, __ATOMIC_ACQUIRE)) {
            /* a capture began somewhere: is it this stream? */
            int cap = 0;
            b->epoch = __atomic_load_n(&capture_epoch, __ATOMIC_ACQUIRE);
            if (REAL(cuStreamIsCapturing)(b->stream, &cap) != CUDA_SUCCESS || cap) close_burst(b);
        }
        slow(b, now);
        if (!b->open) return; /* not throttled here */
        now = now_ns();
    }
    struct lim_dev *l = &ldev[b->di];
    b->last_ns = now;
    cur_b = b;
    b->n++;
    b->prov += l->est_ns;
    __atomic_add_fetch(&l->inflight, (int64_t)l->est_ns, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&rdev(l)->tokens_ns, (int64_t)l->est_ns, __ATOMIC_RELAXED);
}

void vgpu_lim_after_launch(CUstream s, CUresult r)
{
    struct burst *b = cur_b;
    if (!b) return;
    cur_b = NULL;
    if (__builtin_expect(r == CUDA_SUCCESS, 1)) {
        /* the burst ends after this kernel until another launch extends it */
        if (REAL(cuEventRecord)(b->end, s) != CUDA_SUCCESS) close_burst(b);
        return;
    }
    /* a refused launch costs nothing: undo its provisional charge */
    if (!b->open || !b->n) return;
    struct lim_dev *l = &ldev[b->di];
    b->n--;
    b->prov -= l->est_ns;
    __atomic_sub_fetch(&l->inflight, (int64_t)l->est_ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&rdev(l)->tokens_ns, (int64_t)l->est_ns, __ATOMIC_RELAXED);
}

/* ---- handle lifetimes ---- */

/* Mark every thread's bursts on (ctx, stream) -- stream NULL: every stream of
 * ctx -- as dead; their owners drop them at their next launch. */
static void mark_dead(CUcontext ctx, CUstream s, int whole_ctx)
{
    pthread_mutex_lock(&threads_mu);
    for (int t = 0; t < MAX_THREADS; t++) {
        struct burst *bs = threads[t];
        if (!bs) continue;
        for (int i = 0; i < TL_STREAMS; i++) {
            struct burst *b = &bs[i];
            if (!b->used) continue;
            /* a created stream names its context; default streams are keyed by context */
            int match = whole_ctx ? (b->ctx == ctx || b->octx == ctx) : b->stream == s;
            if (!match) continue;
            if (whole_ctx) __atomic_store_n(&b->ctx_dead, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&b->dead, 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&threads_mu);
}

void vgpu_lim_stream_destroy(CUstream s)
{
    if (!lim_inited || !vgpu_lim_active || !s) return;
    mark_dead(NULL, s, 0);
}

/* Before the context goes (pend_mu held by the caller through the real
 * destroy, so no poll touches its events meanwhile). */
static void forget_ctx_locked(CUcontext c)
{
    for (int i = 0; i < MAX_CTX; i++) {
        if (lctx[i].ctx != c) continue;
        /* its bursts still pending: the provisional charge stands */
        unsigned kept = 0;
        for (unsigned k = 0; k < pend_len; k++) {
            struct pending p = pend[(pend_head + k) % MAX_PENDING];
            if (p.ci != i) pend[(pend_head + kept++) % MAX_PENDING] = p;
            else __atomic_sub_fetch(&ldev[p.di].inflight, (int64_t)p.prov, __ATOMIC_RELAXED);
        }
        pend_len = kept;
        memset(&lctx[i], 0, sizeof lctx[i]); /* its events die with it */
    }
}

/* The driver destroys c and every event of it: no poll may touch them from
 * here on, so pend_mu is held through the driver's call. */
CUresult vgpu_lim_ctx_destroy(CUcontext c)
{
    if (!lim_inited || !vgpu_lim_active || !c) return REAL(cuCtxDestroy_v2)(c);
    mark_dead(c, NULL, 1);
    pthread_mutex_lock(&pend_mu);
    forget_ctx_locked(c);
    CUresult r = REAL(cuCtxDestroy_v2)(c);
    pthread_mutex_unlock(&pend_mu);
    return r;
}

/* The primary context of dev, if it is active (retaining an inactive one
 * would create it). */
static CUcontext primary_of(CUdevice dev)
{
    unsigned flags = 0;
    int active = 0;
    CUcontext c = NULL;
    if (REAL(cuDevicePrimaryCtxGetState)(dev, &flags, &active) != CUDA_SUCCESS || !active) return NULL;
    if (REAL(cuDevicePrimaryCtxRetain)(&c, dev) != CUDA_SUCCESS) return NULL;
    REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    return c;
}

/* The last release destroys the primary context. */
CUresult vgpu_lim_primary_release(CUdevice dev)
{
    if (!lim_inited || !vgpu_lim_active) return REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    CUcontext c = primary_of(dev);
    pthread_mutex_lock(&pend_mu);
    CUresult r = REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    unsigned flags = 0;
    int active = 1;
    if (c && r == CUDA_SUCCESS && REAL(cuDevicePrimaryCtxGetState)(dev, &flags, &active) == CUDA_SUCCESS && !active) {
        forget_ctx_locked(c);
        pthread_mutex_unlock(&pend_mu);
        mark_dead(c, NULL, 1);
        return r;
    }
    pthread_mutex_unlock(&pend_mu);
    return r;
}

/* A reset destroys every stream and event of the primary context. */
CUresult vgpu_lim_primary_reset(CUdevice dev)
{
    if (!lim_inited || !vgpu_lim_active) return REAL(cuDevicePrimaryCtxReset_v2)(dev);
    CUcontext c = primary_of(dev);
    if (c) mark_dead(c, NULL, 1);
    pthread_mutex_lock(&pend_mu);
    if (c) forget_ctx_locked(c);
    CUresult r = REAL(cuDevicePrimaryCtxReset_v2)(dev);
    pthread_mutex_unlock(&pend_mu);
    return r;
}

void vgpu_lim_capture_begin(CUstream s)
{
    (void)s;
    __atomic_add_fetch(&capture_epoch, 1, __ATOMIC_ACQ_REL);
}

/* ---- set-up ---- */

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
        l->inflight_cap = INFLIGHT_NS;
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
