#define _GNU_SOURCE
#include "fake_gpu.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sched.h>
#include <signal.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct fg_config fg;
static struct fg_state *st;
static pthread_once_t once = PTHREAD_ONCE_INIT;

uint64_t fg_parse_size(const char *s)
{
    char *e;
    uint64_t v = strtoull(s, &e, 10);
    switch (*e) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    }
    return v;
}

uint64_t fg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fg_sleep_until(uint64_t t)
{
    for (;;) {
        uint64_t now = fg_now();
        if (now >= t) return;
        uint64_t d = t - now;
        struct timespec ts = {(time_t)(d / 1000000000ull), (long)(d % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

/* FAKE_GPU_DEV_<minor>=<pci>,<uuid>,<memory>,<name>; returns 0 if the
 * variable is not one of those or is malformed (then it is ignored). */
static int parse_dev_var(const char *kv, struct fg_dev_cfg *d)
{
    static const char prefix[] = "FAKE_GPU_DEV_";
    if (strncmp(kv, prefix, sizeof prefix - 1)) return 0;
    char *end;
    long minor = strtol(kv + sizeof prefix - 1, &end, 10);
    if (end == kv + sizeof prefix - 1 || *end != '=' || minor < 0 || minor >= FG_MAX_DEV) return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", end + 1);
    char *save = NULL, *pci = strtok_r(buf, ",", &save), *uuid = strtok_r(NULL, ",", &save);
    char *mem = strtok_r(NULL, ",", &save), *name = strtok_r(NULL, "", &save);
    if (!pci || !uuid || !mem) return 0;
    memset(d, 0, sizeof *d);
    snprintf(d->pci, sizeof d->pci, "%s", pci);
    snprintf(d->uuid, sizeof d->uuid, "%s", uuid);
    snprintf(d->name, sizeof d->name, "%s", name ? name : "Fake GPU");
    d->mem = fg_parse_size(mem);
    d->slot = (int)minor;
    return 1;
}

static int by_pci(const void *a, const void *b)
{
    return strcasecmp(((const struct fg_dev_cfg *)a)->pci, ((const struct fg_dev_cfg *)b)->pci);
}

/* The devices given one variable each; 0 if there are none. */
static int load_dev_vars(void)
{
    extern char **environ;
    for (char **e = environ; e && *e && fg.ndev < FG_MAX_DEV; e++) {
        struct fg_dev_cfg d;
        if (!parse_dev_var(*e, &d)) continue;
        int dup = 0;
        for (int i = 0; i < fg.ndev; i++) dup |= fg.dev[i].slot == d.slot;
        if (!dup) fg.dev[fg.ndev++] = d;
    }
    qsort(fg.dev, (size_t)fg.ndev, sizeof fg.dev[0], by_pci);
    return fg.ndev;
}

static void load(void)
{
    if (!load_dev_vars()) {
        const char *v = getenv("FAKE_GPU_COUNT");
        fg.ndev = v ? atoi(v) : 1;
        if (fg.ndev < 0) fg.ndev = 0;
        if (fg.ndev > FG_MAX_DEV) fg.ndev = FG_MAX_DEV;
        const char *mem = getenv("FAKE_GPU_MEM");
        const char *uu = getenv("FAKE_GPU_UUIDS");
        for (int i = 0; i < fg.ndev; i++) {
            fg.dev[i].mem = 16ull << 30;
            fg.dev[i].slot = i;
            snprintf(fg.dev[i].uuid, sizeof fg.dev[i].uuid, "GPU-fa4e0000-0000-0000-0000-0000000000%02d", i);
            snprintf(fg.dev[i].pci, sizeof fg.dev[i].pci, "0000:%02x:00.0", 0x10 + 0x10 * i);
            snprintf(fg.dev[i].name, sizeof fg.dev[i].name, "Fake GPU");
        }
        for (int i = 0; mem && i < fg.ndev; i++) {
            fg.dev[i].mem = fg_parse_size(mem);
            mem = strchr(mem, ',');
            if (mem) mem++;
        }
        for (int i = 0; uu && i < fg.ndev; i++) {
            const char *e = strchr(uu, ',');
            size_t n = e ? (size_t)(e - uu) : strlen(uu);
            if (n >= sizeof fg.dev[i].uuid) n = sizeof fg.dev[i].uuid - 1;
            memcpy(fg.dev[i].uuid, uu, n);
            fg.dev[i].uuid[n] = 0;
            uu = e ? e + 1 : NULL;
        }
    }
    /* CUDA_VISIBLE_DEVICES: host indices or UUIDs, in the order given */
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (!cvd) {
        fg.nvis = fg.ndev;
        for (int i = 0; i < fg.ndev; i++) fg.vis[i] = i;
    } else {
        const char *p = cvd;
        while (*p && fg.nvis < FG_MAX_DEV) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            int idx = -1;
            if (*p >= '0' && *p <= '9') idx = atoi(p);
            else for (int i = 0; i < fg.ndev; i++) if (!strncasecmp(p, fg.dev[i].uuid, n)) idx = i;
            if (idx < 0 || idx >= fg.ndev) break; /* like CUDA: stop at the first invalid entry */
            fg.vis[fg.nvis++] = idx;
            if (!e) break;
            p = e + 1;
        }
    }
    const char *v = getenv("FAKE_KERNEL_NS");
    fg.kernel_ns = v ? strtoull(v, 0, 10) : 0;
    v = getenv("FAKE_WORK_TAG");
    fg.tag = v ? atoi(v) & 7 : 0;
    v = getenv("FAKE_GPU_SCHED");
    fg.sched = FG_SCHED_LAUNCH;
    if (v && !strcmp(v, "alternate")) fg.sched = FG_SCHED_ALTERNATE;
    else if (v && !strncmp(v, "slice:", 6) && strtod(v + 6, NULL) > 0) {
        fg.sched = FG_SCHED_SLICE;
        fg.slice_ns = (uint64_t)(strtod(v + 6, NULL) * 1e6);
    } else if (v && *v && strcmp(v, "launch"))
        fprintf(stderr, "fake gpu: FAKE_GPU_SCHED=%s unknown (launch, alternate, slice:<ms>): using launch\n", v);

    char path[512];
    v = getenv("FAKE_GPU_STATE");
    if (v && *v) snprintf(path, sizeof path, "%s", v);
    else snprintf(path, sizeof path, "/tmp/fakegpu-%d.state", (int)getuid());
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    void *m = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, sizeof(struct fg_state)) == 0)
        m = mmap(NULL, sizeof(struct fg_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd >= 0) close(fd);
    if (m == MAP_FAILED) {
        m = mmap(NULL, sizeof(struct fg_state), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        fprintf(stderr, "fake gpu: state file %s unusable, state is private\n", path);
    }
    st = m;
    uint32_t zero = 0;
    __atomic_compare_exchange_n(&st->magic, &zero, FG_MAGIC, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    zero = 0;
    if (__atomic_compare_exchange_n(&st->ready, &zero, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        /* host-style PIDs differ from the processes' own, by an offset nobody
         * can guess, as a container's PIDs differ from the host's */
        st->hostpid_base = 100000u + (uint32_t)((fg_now() ^ (uint64_t)getpid() * 2654435761u) % 800000u);
        __atomic_store_n(&st->ready, 2, __ATOMIC_RELEASE);
    }
    while (__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE) != 2) sched_yield();
}

void fg_init(void) { pthread_once(&once, load); }
struct fg_state *fg_state(void) { fg_init(); return st; }
struct fg_dev_state *fg_dev(int dev) { fg_init(); return &st->dev[fg.dev[dev].slot]; }

uint32_t fg_pidns(void)
{
    static uint32_t ns;
    struct stat sb;
    if (!ns && stat("/proc/self/ns/pid", &sb) == 0) ns = (uint32_t)sb.st_ino;
    return ns;
}

/* Host-style PIDs of processes of a namespace other than the root one also
 * depend on the namespace, so that two containers' PID 7 stay apart. */
uint32_t fg_hostpid(void)
{
    fg_init();
    uint32_t ns = fg_pidns(), mix = ns && ns != FG_ROOT_PIDNS ? (ns % 4093u) * 1024u : 0;
    return (uint32_t)getpid() + st->hostpid_base + mix;
}

/* The PID in this process's (root) namespace of process pid of namespace
 * ns, from /proc/<n>/ns/pid and the last NSpid field of /proc/<n>/status;
 * 0 when not found. */
static uint32_t visible_pid(int32_t pid, uint32_t ns)
{
    DIR *d = opendir("/proc");
    if (!d) return 0;
    uint32_t found = 0;
    char path[64], line[256];
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        char *end;
        long n = strtol(e->d_name, &end, 10);
        if (*end || n <= 0) continue;
        struct stat sb;
        snprintf(path, sizeof path, "/proc/%ld/ns/pid", n);
        if (stat(path, &sb) || (uint32_t)sb.st_ino != ns) continue;
        snprintf(path, sizeof path, "/proc/%ld/status", n);
        FILE *f = fopen(path, "re");
        if (!f) continue;
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "NSpid:", 6)) {
                char *last = strrchr(line, '\t');
                if (last && atol(last + 1) == pid) found = (uint32_t)n;
                break;
            }
        fclose(f);
    }
    closedir(d);
    return found;
}

int fg_alive(int32_t pid, uint32_t ns)
{
    uint32_t me = fg_pidns();
    if (!ns || !me || ns == me) return pid == getpid() || kill(pid, 0) == 0 || errno == EPERM;
    if (me == FG_ROOT_PIDNS) return visible_pid(pid, ns) != 0;
    return 1; /* a namespace this process cannot see into */
}

uint32_t fg_nvml_pid(const struct fg_proc *p)
{
    int32_t pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
    uint32_t ns = p->pidns, me = fg_pidns();
    if (!pid) return 0;
    if (ns && me == FG_ROOT_PIDNS && ns != me) return visible_pid(pid, ns);
    return fg_alive(pid, ns) ? p->hostpid : 0;
}

uint32_t fg_nvml_pid_of_hostpid(uint32_t hostpid)
{
    fg_init();
    for (int i = 0; i < FG_MAX_PROCS; i++)
        if (st->proc[i].pid && st->proc[i].hostpid == hostpid) {
            uint32_t pid = fg_nvml_pid(&st->proc[i]);
            return pid ? pid : hostpid;
        }
    return hostpid;
}

static int alive(int32_t pid, uint32_t ns) { return fg_alive(pid, ns); }

/* This process's entry in the process table (memory per device for NVML). */
struct fg_proc *fg_proc_self(void)
{
    static __thread struct fg_proc *mine;
    static __thread int32_t mine_pid;
    fg_init();
    int32_t pid = getpid();
    uint32_t ns = fg_pidns();
    if (mine && mine_pid == pid) return mine; /* after fork the child takes its own */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < FG_MAX_PROCS; i++) {
            struct fg_proc *p = &st->proc[i];
            int32_t cur = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
            if (cur == pid && p->pidns == ns) { mine = p; mine_pid = pid; return p; }
            if (pass == 1 && (cur == 0 || !alive(cur, p->pidns)) &&
                __atomic_compare_exchange_n(&p->pid, &cur, pid, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                memset(p->used, 0, sizeof p->used);
                p->pidns = ns;
                p->hostpid = fg_hostpid();
                mine = p; mine_pid = pid;
                return p;
            }
        }
    return NULL;
}

int fg_phys_alloc(int dev, uint64_t bytes)
{
    fg_init();
    uint64_t *u = &fg_dev(dev)->phys_used, old = __atomic_load_n(u, __ATOMIC_RELAXED), nw;
    do {
        if (bytes > fg.dev[dev].mem || old > fg.dev[dev].mem - bytes) return -1;
        nw = old + bytes;
    } while (!__atomic_compare_exchange_n(u, &old, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    uint64_t pk = __atomic_load_n(&fg_dev(dev)->peak_used, __ATOMIC_RELAXED);
    while (nw > pk && !__atomic_compare_exchange_n(&fg_dev(dev)->peak_used, &pk, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
    struct fg_proc *p = fg_proc_self();
    if (p) __atomic_add_fetch(&p->used[fg.dev[dev].slot], bytes, __ATOMIC_RELAXED);
    return 0;
}

void fg_phys_free(int dev, uint64_t bytes)
{
    fg_init();
    __atomic_sub_fetch(&fg_dev(dev)->phys_used, bytes, __ATOMIC_SEQ_CST);
    struct fg_proc *p = fg_proc_self();
    if (p) {
        uint64_t *u = &p->used[fg.dev[dev].slot], o = __atomic_load_n(u, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(u, &o, o > bytes ? o - bytes : 0, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            ;
    }
}

/* One kernel at a time per device, in submission order across processes:
 * contexts of different processes time-slice at kernel granularity. */
uint64_t fg_run(int dev, uint64_t not_before, uint64_t dur)
{
    fg_init();
    struct fg_dev_state *d = fg_dev(dev);
    uint64_t now = fg_now(), tail = __atomic_load_n(&d->tail_ns, __ATOMIC_RELAXED), start, end;
    do {
        start = tail > now ? tail : now;
        if (not_before > start) start = not_before;
        end = start + dur;
    } while (!__atomic_compare_exchange_n(&d->tail_ns, &tail, end, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    __atomic_add_fetch(&d->busy_ns[fg.tag], dur, __ATOMIC_RELAXED);
    uint64_t i = __atomic_fetch_add(&st->trace_next, 1, __ATOMIC_RELAXED) % FG_TRACE_LEN;
    st->trace[i] = (struct fg_trace){start, end, (uint32_t)fg.tag, (uint32_t)fg.dev[dev].slot, fg_hostpid(), 0};
    return end;
}

/* ---- the engine ---- */

uint64_t fg_ctx_key(void) { fg_init(); return __atomic_add_fetch(&st->ctx_next, 1, __ATOMIC_RELAXED); }

static struct fg_lane *L(int lane) { return &st->lane[lane]; }

int fg_lane_open(int dev, uint64_t ctx)
{
    fg_init();
    int slot = fg.dev[dev].slot;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < FG_MAX_LANES; i++) {
            struct fg_lane *l = L(i);
            uint32_t u = __atomic_load_n(&l->in_use, __ATOMIC_ACQUIRE);
            /* pass 1 also takes lanes of dead processes (their work is dropped, as the driver does) */
            if (u && !(pass == 1 && !alive(l->pid, l->pidns))) continue;
            if (!__atomic_compare_exchange_n(&l->in_use, &u, 2, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) continue;
            l->dev = (uint32_t)slot;
            l->closing = 0;
            l->tag = (uint32_t)fg.tag;
            l->pid = getpid();
            l->pidns = fg_pidns();
            l->hostpid = fg_hostpid();
            l->ctx = ctx;
            l->gen++;
            l->last_done = 0;
            /* sequence numbers keep growing across generations */
            l->head = l->tail;
            __atomic_store_n(&l->in_use, 1, __ATOMIC_RELEASE);
            return i;
        }
    return -1;
}


/* Engine lock of a device slot: a spin lock naming its holder, taken over
 * when the holder died (a test may SIGKILL a process at any point). */
static void elock(struct fg_engine *e)
{
    uint32_t me = (uint32_t)getpid();
    for (unsigned spins = 0;; spins++) {
        uint32_t cur = 0;
        if (__atomic_compare_exchange_n(&e->lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
        if (spins > 1000 && cur && !alive((int32_t)cur, fg_pidns()) &&
            __atomic_compare_exchange_n(&e->lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        sched_yield();
    }
}
static void eunlock(struct fg_engine *e) { __atomic_store_n(&e->lock, 0, __ATOMIC_RELEASE); }

static void trace_busy(struct fg_lane *l, uint64_t a, uint64_t b)
{
    uint64_t n = __atomic_load_n(&st->trace_next, __ATOMIC_ACQUIRE);
    struct fg_trace *t = n ? &st->trace[(n - 1) % FG_TRACE_LEN] : NULL;
    if (t && t->end == a && t->pid == l->hostpid && t->dev == l->dev && t->tag == l->tag)
        t->end = b; /* the same context kept the GPU: one record */
    else
        st->trace[__atomic_fetch_add(&st->trace_next, 1, __ATOMIC_ACQ_REL) % FG_TRACE_LEN] =
            (struct fg_trace){a, b, l->tag, l->dev, l->hostpid, 0};
    st->dev[l->dev].busy_ns[l->tag & 7] += b - a;
}

static int lane_live(struct fg_lane *l, uint32_t slot)
{
    return __atomic_load_n(&l->in_use, __ATOMIC_ACQUIRE) == 1 && l->dev == slot;
}

static uint64_t e_now; /* the time of the engine's current simulation step */

/* A lane's work is dropped when its process died. */
static int lane_pending(struct fg_lane *l, uint32_t slot)
{
    if (!lane_live(l, slot) || l->head == l->tail) return 0;
    uint64_t now = e_now; /* liveness: a system call, so at most every 50 ms per lane */
    if (now - l->alive_at > 50000000ull) {
        l->alive_at = now;
        if (!alive(l->pid, l->pidns)) { l->head = l->tail; return 0; }
    }
    return 1;
}

/* Round robin: the next context after the current one with pending work
 * (exclude = 0: any), or 0. */
static uint64_t pick(struct fg_engine *e, uint32_t slot, uint64_t exclude)
{
    for (int k = 1; k <= FG_MAX_LANES; k++) {
        uint32_t i = (e->rr + (uint32_t)k) % FG_MAX_LANES;
        struct fg_lane *l = L((int)i);
        if (lane_pending(l, slot) && l->ctx != exclude) { e->rr = i; return l->ctx; }
    }
    return 0;
}

static int others_pending(uint32_t slot, uint64_t ctx)
{
    for (int i = 0; i < FG_MAX_LANES; i++)
        if (L(i)->ctx != ctx && lane_pending(L(i), slot)) return 1;
    return 0;
}

/* The serving context reaches the markers at the front of its lanes. */
static void pop_markers(uint32_t slot, uint64_t ctx, uint64_t t)
{
    for (int i = 0; i < FG_MAX_LANES; i++) {
        struct fg_lane *l = L(i);
        if (!lane_live(l, slot) || l->ctx != ctx) continue;
        while (l->head < l->tail && l->q[l->head % FG_LANE_RING].dur == 0) {
            l->q[l->head % FG_LANE_RING].done = t;
            l->head++;
        }
    }
}

static void lane_reap(uint32_t slot)
{
    for (int i = 0; i < FG_MAX_LANES; i++) {
        struct fg_lane *l = L(i);
        if (lane_live(l, slot) && l->closing && l->head == l->tail) __atomic_store_n(&l->in_use, 0, __ATOMIC_RELEASE);
    }
}

/* Simulate device slot up to time T (engine lock held). */
static void advance(uint32_t slot, uint64_t T)
{
    struct fg_engine *e = &st->eng[slot];
    e_now = T;
    if (e->sim_t == 0) e->sim_t = T;
    for (;;) {
        if (e->cur_ctx) {
            /* is the current context still runnable? */
            int any = 0;
            for (int i = 0; i < FG_MAX_LANES && !any; i++)
                any = L(i)->ctx == e->cur_ctx && lane_pending(L(i), slot);
            if (!any) e->cur_ctx = 0;
        }
        if (!e->cur_ctx) {
            e->cur_ctx = pick(e, slot, 0);
            if (!e->cur_ctx) { if (e->sim_t < T) e->sim_t = T; break; }
            e->slice_start = e->sim_t;
        }
        uint64_t c = e->cur_ctx;
        pop_markers(slot, c, e->sim_t);
        uint64_t dt = T > e->sim_t ? T - e->sim_t : 0;
        int nrun = 0;
        struct fg_lane *run1 = NULL;
        for (int i = 0; i < FG_MAX_LANES; i++) {
            struct fg_lane *l = L(i);
            if (!lane_live(l, slot) || l->ctx != c || l->head == l->tail) continue;
            struct fg_item *it = &l->q[l->head % FG_LANE_RING];
            if (it->left < dt) dt = it->left;
            nrun++;
            run1 = l;
        }
        if (!nrun) { e->cur_ctx = 0; continue; }
        int other = others_pending(slot, c);
        if (fg.sched == FG_SCHED_SLICE && other) {
            uint64_t se = e->slice_start + fg.slice_ns;
            if (se <= e->sim_t) { /* the slice is over: preempt */
                e->cur_ctx = pick(e, slot, c);
                e->slice_start = e->sim_t;
                continue;
            }
            if (se - e->sim_t < dt) dt = se - e->sim_t;
        }
        if (dt == 0) break; /* reached T */
        int completed = 0;
        for (int i = 0; i < FG_MAX_LANES; i++) {
            struct fg_lane *l = L(i);
            if (!lane_live(l, slot) || l->ctx != c || l->head == l->tail) continue;
            struct fg_item *it = &l->q[l->head % FG_LANE_RING];
            it->left -= dt;
            if (!it->left) { it->done = e->sim_t + dt; l->head++; completed = 1; }
        }
        trace_busy(run1, e->sim_t, e->sim_t + dt);
        e->sim_t += dt;
        pop_markers(slot, c, e->sim_t);
        if (fg.sched == FG_SCHED_ALTERNATE && completed && others_pending(slot, c)) {
            e->cur_ctx = pick(e, slot, c);
            e->slice_start = e->sim_t;
        }
    }
    lane_reap(slot);
}

uint64_t fg_lane_submit(int lane, uint64_t dur)
{
    struct fg_lane *l = L(lane);
    /* a full lane blocks the submitter until its oldest item is done */
    uint64_t t = __atomic_load_n(&l->tail, __ATOMIC_ACQUIRE);
    if (t >= FG_LANE_DEPTH) fg_lane_wait(lane, t - FG_LANE_DEPTH);
    struct fg_engine *e = &st->eng[l->dev];
    elock(e);
    uint64_t seq = l->tail;
    if (fg.sched == FG_SCHED_LAUNCH) {
        /* eager: placed on the one device timeline now */
        int dev = 0;
        for (int i = 0; i < fg.ndev; i++) if ((uint32_t)fg.dev[i].slot == l->dev) dev = i;
        uint64_t now = fg_now(), end;
        if (dur) end = fg_run(dev, l->last_done, dur);
        else { /* a marker: reached once everything queued before it, by any process, has run */
            uint64_t tail = __atomic_load_n(&st->dev[l->dev].tail_ns, __ATOMIC_SEQ_CST);
            end = l->last_done > now ? l->last_done : now;
            if (tail > end) end = tail;
        }
        if (dur) l->last_done = end;
        l->q[seq % FG_LANE_RING] = (struct fg_item){dur, 0, end};
        __atomic_store_n(&l->tail, seq + 1, __ATOMIC_RELEASE);
        eunlock(e);
        return seq;
    }
    advance(l->dev, fg_now());
    l->q[seq % FG_LANE_RING] = (struct fg_item){dur, dur, 0};
    __atomic_store_n(&l->tail, seq + 1, __ATOMIC_RELEASE);
    advance(l->dev, fg_now()); /* a marker on an idle lane of the serving context is reached at once */
    eunlock(e);
    return seq;
}

/* Items are numbered per lane across its generations, so an event recorded
 * on a stream destroyed since still finds its item while the ring holds it. */
int fg_lane_query(int lane, uint64_t seq, uint64_t *done)
{
    struct fg_lane *l = L(lane);
    if (fg.sched == FG_SCHED_LAUNCH) {
        if (__atomic_load_n(&l->tail, __ATOMIC_ACQUIRE) - seq > FG_LANE_RING) { *done = 0; return 1; }
        uint64_t t = l->q[seq % FG_LANE_RING].done;
        if (t > fg_now()) return 0;
        *done = t;
        return 1;
    }
    struct fg_engine *e = &st->eng[l->dev];
    elock(e);
    advance(l->dev, fg_now());
    int r = 1;
    if (l->tail - seq > FG_LANE_RING) *done = 0;
    else if (seq >= l->head) r = 0;
    else *done = l->q[seq % FG_LANE_RING].done;
    eunlock(e);
    return r;
}

void fg_lane_wait(int lane, uint64_t seq)
{
    struct fg_lane *l = L(lane);
    for (;;) {
        uint64_t t;
        if (fg_lane_query(lane, seq, &t)) return;
        /* sleep for at least what is left ahead of it on this lane */
        uint64_t left = 0;
        if (fg.sched == FG_SCHED_LAUNCH) {
            uint64_t d = l->q[seq % FG_LANE_RING].done, now = fg_now();
            left = d > now ? d - now : 0;
        } else {
            for (uint64_t i = l->head; i <= seq && i < l->tail; i++) left += l->q[i % FG_LANE_RING].left;
            if (left > 2000000) left = 2000000;
        }
        if (left < 20000) left = 20000;
        struct timespec ts = {0, (long)left};
        nanosleep(&ts, NULL);
    }
}

void fg_lane_close(int lane)
{
    struct fg_lane *l = L(lane);
    if (fg.sched == FG_SCHED_LAUNCH) { __atomic_store_n(&l->in_use, 0, __ATOMIC_RELEASE); return; }
    struct fg_engine *e = &st->eng[l->dev];
    elock(e);
    l->closing = 1;
    advance(l->dev, fg_now());
    eunlock(e);
}

void fg_engine_sync(int dev)
{
    fg_init();
    if (fg.sched == FG_SCHED_LAUNCH) return;
    uint32_t slot = (uint32_t)fg.dev[dev].slot;
    elock(&st->eng[slot]);
    advance(slot, fg_now());
    eunlock(&st->eng[slot]);
}
