/* Compute-limiter workloads and their analysis.
 *   limtest run <seconds> <kernel_us> <path> [idle_first_s]
 *       saturate the (fake) GPU with kernels of kernel_us, launched through
 *       path: linked | graph | procaddr | ex; optionally idle first.
 *       LIMTEST_MIX_US=a,b,...: kernel sizes in turn instead; LIMTEST_THEN_US:
 *       the kernel size from half-way on.
 *   limtest pause <busy_s> <pause_s> <after_s> <kernel_us> <mark file>
 *       saturate, pause without synchronising (a burst left open), write the
 *       resume time to the mark file, saturate again.
 *   limtest idlegap
 *       10 kernels of 100 us, idle 3 s, then 2 launches: they must not wait,
 *       and the region's GPU-time counter must count kernel time only.
 *   limtest capture <seconds> <kernel_us> <mode>
 *       one thread captures a graph (mode global|threadlocal|relaxed) while
 *       another launches; then the graph is launched for <seconds>.
 *   limtest churn <seconds> <kernel_us>
 *       create and destroy contexts and streams in a loop while launching.
 *   limtest overlap
 *       two streams of one process each run a 50 ms kernel: they overlap.
 *   limtest analyze <state file> <tag>:<share>[:<mode>[:<arg>]]...
 *       per-1 s GPU share of each tag from the fake GPU's trace of completed
 *       work; asserts the targets. mode: exact (default), atleast, atmost[:<least average>]
 *       (exact's lower bound waived; with a number, the least average), burst, resume:<mark file>, ran (it did
 *       work: the workload checked itself); a tag with no work in the trace
 *       fails. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "tutil.h"
#include "../fake/fake_gpu.h"
#include "../src/region.h"
#include <errno.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct job { double secs; uint64_t kernel_us; const char *path; double idle_first; CUcontext ctx; };
static void *run_thread(void *arg);

static int run(double secs, uint64_t kernel_us, const char *path, double idle_first)
{
    cuInit(0);
    CUcontext c;
    const char *dev = getenv("LIMTEST_DEVICE");
    cuCtxCreate_v2(&c, 0, dev ? atoi(dev) : 0);
    const char *th = getenv("LIMTEST_THREADS"); /* several launching threads, one stream each */
    int nth = th ? atoi(th) : 1;
    struct job j = {secs, kernel_us, path, idle_first, c};
    pthread_t t[16];
    for (int i = 1; i < nth && i < 16; i++) pthread_create(&t[i], NULL, run_thread, &j);
    run_thread(&j);
    for (int i = 1; i < nth && i < 16; i++) pthread_join(t[i], NULL);
    return 0;
}

static void *run_thread(void *arg)
{
    struct job *j = arg;
    double secs = j->secs, idle_first = j->idle_first;
    uint64_t kernel_us = j->kernel_us;
    const char *path = j->path;
    cuCtxSetCurrent(j->ctx);
    CUfunction f;
    cuModuleGetFunction(&f, NULL, "sleep_ns");
    CUstream s;
    cuStreamCreate(&s, 0);
    uint64_t dur = kernel_us * 1000;
    void *params[] = {&dur};
    __typeof__(&cuLaunchKernel) launch = cuLaunchKernel;
    if (!strcmp(path, "procaddr")) {
        void *h = dlopen("libcuda.so.1", RTLD_NOW);
        __typeof__(&cuGetProcAddress_v2) gpa = (__typeof__(gpa))dlsym(h, "cuGetProcAddress_v2");
        gpa("cuLaunchKernel", (void **)&launch, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, NULL);
    }
    /* path graph: a one-kernel graph, captured and instantiated as CUDA
     * programs do; its launches are what is throttled */
    CUgraphExec ge = NULL;
    if (!strcmp(path, "graph")) {
        CUgraph g = NULL;
        if (cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) != CUDA_SUCCESS ||
            cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) != CUDA_SUCCESS ||
            cuStreamEndCapture(s, &g) != CUDA_SUCCESS || cuGraphInstantiateWithFlags(&ge, g, 0) != CUDA_SUCCESS) {
            fprintf(stderr, "limtest: cannot capture the graph\n");
            exit(1);
        }
    }
    if (idle_first > 0) usleep((useconds_t)(idle_first * 1e6));
    uint64_t end = now_ns() + (uint64_t)((secs - (idle_first > 0 ? idle_first : 0)) * 1e9);
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hStream = s;
    long n = 0;
    const char *gap = getenv("LIMTEST_GAP_US"); /* CPU time between launches, like a framework's host code */
    uint64_t gap_ns = gap ? strtoull(gap, 0, 10) * 1000 : 0;
    /* kernels of several sizes, in turn (a training step's many small and
     * few large kernels), and kernels of another size from half-way on (a
     * workload changing phase): what the limiter learnt per launch is wrong
     * for each next kernel */
    uint64_t mix[16];
    int nmix = 0;
    for (const char *m = getenv("LIMTEST_MIX_US"); m && *m && nmix < 16; m = strchr(m, ',') ? strchr(m, ',') + 1 : "")
        mix[nmix++] = strtoull(m, 0, 10) * 1000;
    const char *then = getenv("LIMTEST_THEN_US");
    uint64_t then_ns = then ? strtoull(then, 0, 10) * 1000 : 0, half = end - (end - now_ns()) / 2;
    while (now_ns() < end) {
        if (gap_ns) { uint64_t g = now_ns() + gap_ns; while (now_ns() < g) ; }
        if (nmix) dur = mix[n % nmix];
        if (then_ns && now_ns() >= half) dur = then_ns;
        if (ge) cuGraphLaunch(ge, s);
        else if (!strcmp(path, "ex")) cuLaunchKernelEx(&cfg, f, params, NULL);
        else launch(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
        n++;
    }
    cuStreamSynchronize(s);
    printf("# launched %ld kernels of %llu us via %s\n", n, (unsigned long long)kernel_us, path);
    return NULL;
}


static CUfunction sleep_fn(void)
{
    CUfunction f;
    cuModuleGetFunction(&f, NULL, "sleep_ns");
    return f;
}

static void saturate(CUfunction f, CUstream s, uint64_t kernel_us, double secs)
{
    uint64_t dur = kernel_us * 1000, end = now_ns() + (uint64_t)(secs * 1e9);
    void *params[] = {&dur};
    while (now_ns() < end) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
}

static int pause_run(double busy, double pause_s, double after, uint64_t kernel_us, const char *mark)
{
    CUcontext c;
    CUstream s;
    cuInit(0);
    cuCtxCreate_v2(&c, 0, 0);
    cuStreamCreate(&s, 0);
    CUfunction f = sleep_fn();
    saturate(f, s, kernel_us, busy);
    usleep((useconds_t)(pause_s * 1e6)); /* no synchronisation: the burst stays open */
    FILE *m = fopen(mark, "w");
    if (!m) return 2;
    fprintf(m, "%llu\n", (unsigned long long)now_ns());
    fclose(m);
    saturate(f, s, kernel_us, after);
    cuStreamSynchronize(s);
    return 0;
}

/* The claim's GPU-time counter in the shared region. */
static uint64_t region_gpu_ns(void)
{
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    int fd = path ? open(path, O_RDONLY) : -1;
    if (fd < 0) return UINT64_MAX;
    struct vgpu_region *r = mmap(NULL, sizeof *r, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (r == MAP_FAILED) return UINT64_MAX;
    uint64_t v = __atomic_load_n(&r->dev[0].gpu_ns_total, __ATOMIC_RELAXED);
    munmap(r, sizeof *r);
    return v;
}

static int idlegap(void)
{
    CUcontext c;
    CUstream s;
    cuInit(0);
    cuCtxCreate_v2(&c, 0, 0);
    cuStreamCreate(&s, 0);
    CUfunction f = sleep_fn();
    uint64_t dur = 100000;
    void *params[] = {&dur};
    for (int i = 0; i < 10; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    sleep(3); /* idle, the burst left open */
    uint64_t t0 = now_ns();
    for (int i = 0; i < 2; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    double blocked = (double)(now_ns() - t0) / 1e6;
    cuStreamSynchronize(s);
    /* let the driver's sampling period close, then a launch settles what completed */
    usleep(400000);
    cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    cuStreamSynchronize(s);
    double gpu = (double)region_gpu_ns() / 1e6;
    /* then 200 ms of kernels: the counter must follow them */
    dur = 10000000;
    for (int i = 0; i < 20; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    cuStreamSynchronize(s);
    usleep(400000);
    dur = 100000;
    cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    cuStreamSynchronize(s);
    double gpu2 = (double)region_gpu_ns() / 1e6 - gpu;
    t_check(blocked < 50, "2 launches after 3 s idle at a 25%% share took %.1f ms (the idle time is not charged)", blocked);
    t_check(gpu <= 20, "the region's GPU-time counter reads %.2f ms for 1.3 ms of kernels and 3 s idle", gpu);
    t_check(gpu2 >= 150 && gpu2 <= 260, "then %.1f ms for 200 ms of kernels", gpu2);
    return 0;
}

/* Thread 2 launches under the limit while thread 1 captures. */
struct capjob { CUcontext c; volatile int stop; long n; };
static void *cap_neighbour(void *arg)
{
    struct capjob *j = arg;
    cuCtxSetCurrent(j->c);
    CUstream s;
    cuStreamCreate(&s, 0);
    CUfunction f = sleep_fn();
    uint64_t dur = 200000;
    void *params[] = {&dur};
    while (!j->stop) {
        if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) == CUDA_SUCCESS) j->n++;
    }
    return NULL;
}

static int capture(double secs, uint64_t kernel_us, const char *mode)
{
    int m = !strcmp(mode, "relaxed") ? CU_STREAM_CAPTURE_MODE_RELAXED
            : !strcmp(mode, "threadlocal") ? CU_STREAM_CAPTURE_MODE_THREAD_LOCAL : CU_STREAM_CAPTURE_MODE_GLOBAL;
    CUcontext c;
    CUstream s;
    cuInit(0);
    cuCtxCreate_v2(&c, 0, 0);
    cuStreamCreate(&s, 0);
    CUfunction f = sleep_fn();
    uint64_t dur = kernel_us * 1000;
    void *params[] = {&dur};
    /* the claim deep in debt when the capture begins (a 100 ms kernel at a
     * 30% share): a launch into the capture must not wait for budget */
    uint64_t big = 100000000;
    void *bparams[] = {&big};
    cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, bparams, NULL);
    /* a burst open on the stream before the capture begins */
    for (int i = 0; i < 3; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    struct capjob j = {c, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, cap_neighbour, &j);
    usleep(200000);
    CUresult rb = cuStreamBeginCapture_v2(s, m);
    /* 100 kernels captured: 100 x kernel_us of GPU time, which would take
     * long to admit if the capture were charged */
    uint64_t t0 = now_ns();
    CUresult rl = CUDA_SUCCESS;
    for (int i = 0; i < 100 && rl == CUDA_SUCCESS; i++) rl = cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    double cap_ms = (double)(now_ns() - t0) / 1e6;
    usleep(500000); /* the neighbour keeps launching (and libvgpu polling) during the capture */
    CUgraph g = NULL;
    CUresult re = cuStreamEndCapture(s, &g);
    j.stop = 1;
    pthread_join(t, NULL);
    t_check(rb == CUDA_SUCCESS && rl == CUDA_SUCCESS && re == CUDA_SUCCESS && g,
            "%s capture beside a launching thread: begin %d, launches %d, end %d (%ld neighbour launches)", mode, rb, rl,
            re, j.n);
    t_check(cap_ms < 50, "100 launches into the capture were not throttled: %.1f ms", cap_ms);
    CUgraphExec e = NULL;
    if (!g || cuGraphInstantiateWithFlags(&e, g, 0) != CUDA_SUCCESS) return 1;
    /* the graph's launches are what is charged */
    uint64_t end = now_ns() + (uint64_t)(secs * 1e9);
    while (now_ns() < end) cuGraphLaunch(e, s);
    cuStreamSynchronize(s);
    return 0;
}

static int churn(double secs, uint64_t kernel_us)
{
    cuInit(0);
    CUfunction f = sleep_fn();
    uint64_t dur = kernel_us * 1000, end = now_ns() + (uint64_t)(secs * 1e9);
    void *params[] = {&dur};
    long rounds = 0, fails = 0;
    CUdevice dev = 0;
    while (now_ns() < end) {
        CUcontext c;
        int primary = rounds % 3 == 2;
        if (primary) { cuDevicePrimaryCtxRetain(&c, dev); cuCtxSetCurrent(c); }
        else cuCtxCreate_v2(&c, 0, dev);
        CUstream s[3];
        for (int i = 0; i < 3; i++) cuStreamCreate(&s[i], 0);
        for (int k = 0; k < 20; k++)
            for (int i = 0; i < 3; i++) fails += cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s[i], params, NULL) != CUDA_SUCCESS;
        /* destroy a stream with work (and an open burst) on it, launch on the others */
        cuStreamDestroy_v2(s[0]);
        for (int k = 0; k < 10; k++) fails += cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s[1], params, NULL) != CUDA_SUCCESS;
        fails += cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL) != CUDA_SUCCESS;
        if (rounds % 2) cuCtxSynchronize();
        cuStreamDestroy_v2(s[1]);
        if (primary) {
            if (rounds % 2) cuDevicePrimaryCtxReset_v2(dev); /* destroys s[2] too */
            cuDevicePrimaryCtxRelease_v2(dev);
            cuCtxSetCurrent(NULL);
        } else {
            cuCtxDestroy_v2(c); /* destroys s[2] and the open bursts' events */
        }
        rounds++;
    }
    t_check(fails == 0, "%ld rounds of context and stream churn, %ld failed launches", rounds, fails);
    return 0;
}

static int overlap(void)
{
    CUcontext c;
    CUstream a, b;
    CUevent ea, eb, e0;
    cuInit(0);
    cuCtxCreate_v2(&c, 0, 0);
    cuStreamCreate(&a, 0);
    cuStreamCreate(&b, 0);
    cuEventCreate(&e0, 0);
    cuEventCreate(&ea, 0);
    cuEventCreate(&eb, 0);
    CUfunction f = sleep_fn();
    uint64_t dur = 50000000;
    void *params[] = {&dur};
    cuEventRecord(e0, a);
    uint64_t t0 = now_ns();
    cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, a, params, NULL);
    cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, b, params, NULL);
    cuEventRecord(ea, a);
    cuEventRecord(eb, b);
    cuStreamSynchronize(a);
    cuStreamSynchronize(b);
    double wall = (double)(now_ns() - t0) / 1e6;
    t_check(wall < 90, "two streams of one process overlap under a limit: two 50 ms kernels took %.1f ms", wall);
    return 0;
}

static int analyze(const char *statef, int argc, char **argv)
{
    int fd = open(statef, O_RDONLY);
    struct fg_state *st = mmap(NULL, sizeof *st, PROT_READ, MAP_SHARED, fd, 0);
    if (st == MAP_FAILED) return 2;
    uint64_t n = st->trace_next < FG_TRACE_LEN ? st->trace_next : FG_TRACE_LEN;
    uint64_t t0 = UINT64_MAX, t1 = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (st->trace[i].start < t0) t0 = st->trace[i].start;
        if (st->trace[i].end > t1) t1 = st->trace[i].end;
    }
    int nw = (int)((t1 - t0) / 1000000000ull);
    if (nw > 64) nw = 64;
    double busy[8][64];
    memset(busy, 0, sizeof busy);
    /* split each kernel's interval over the 1 s windows it covers */
    for (uint64_t i = 0; i < n; i++) {
        struct fg_trace *tr = &st->trace[i];
        for (uint64_t a = tr->start; a < tr->end;) {
            int w = (int)((a - t0) / 1000000000ull);
            uint64_t wend = t0 + (uint64_t)(w + 1) * 1000000000ull;
            uint64_t b = tr->end < wend ? tr->end : wend;
            if (w < 64) busy[tr->tag][w] += (double)(b - a);
            a = b;
        }
    }
    for (int k = 0; k < argc; k++) {
        int tag, share;
        char mode[300] = "exact";
        if (sscanf(argv[k], "%d:%d:%299s", &tag, &share, mode) < 2 || tag < 0 || tag > 7) return 2;
        printf("# tag %d (share %d%%, %s) per 1 s window:", tag, share, mode);
        for (int w = 0; w < nw; w++) printf(" %.1f", busy[tag][w] / 1e7);
        printf("\n");
        double all = 0; /* all of its work, windows or not (a run may be shorter than one) */
        for (uint64_t i = 0; i < n; i++)
            if (st->trace[i].tag == (uint32_t)tag) all += (double)(st->trace[i].end - st->trace[i].start);
        if (all <= 0) { /* its workload died before launching, or never ran */
            t_check(0, "tag %d: no work of it in the trace", tag);
            continue;
        }
        if (!strcmp(mode, "ran")) { /* the workload checks itself; here: it did run */
            t_check(1, "tag %d ran (%.1f ms of GPU time)", tag, all / 1e6);
            continue;
        }
        if (!strncmp(mode, "resume:", 7)) {
            /* GPU time in the first second after the resume */
            FILE *f = fopen(mode + 7, "r");
            unsigned long long r = 0;
            if (!f || fscanf(f, "%llu", &r) != 1) { t_check(0, "tag %d: no resume mark in %s", tag, mode + 7); if (f) fclose(f); continue; }
            fclose(f);
            double got = 0, first = -1;
            for (uint64_t i = 0; i < n; i++) {
                struct fg_trace *tr = &st->trace[i];
                if (tr->tag != (uint32_t)tag || tr->end <= r) continue;
                uint64_t a = tr->start > r ? tr->start : r, b = tr->end < r + 1000000000ull ? tr->end : r + 1000000000ull;
                if (b > a) got += (double)(b - a);
                if (first < 0 || (double)(a - r) < first) first = (double)(a - r);
            }
            double pct = got / 1e7, lost_ms = (share - pct) * 10;
            /* above: the bucket's 100 ms of budget after a pause, and what is in flight */
            t_check(pct >= share * 0.9 && pct <= share * 1.1 + 5,
                    "tag %d resumes at its %d%% at once: %.1f%% in the second after the pause (%.0f ms below the share, "
                    "allowed 100), first kernel %.1f ms after the resume",
                    tag, share, pct, lost_ms > 0 ? lost_ms : 0, first / 1e6);
            continue;
        }
        if (!strcmp(mode, "burst")) {
            /* idle first: find the first window with work, report overshoot and convergence */
            int first = 0;
            while (first < nw && busy[tag][first] < 1e6) first++;
            double over = busy[tag][first] / 1e7 - share;
            int conv = -1;
            for (int w = first; w < nw; w++)
                if (fabs(busy[tag][w] / 1e7 - share) <= 5) { conv = w - first; break; }
            double sum = 0;
            int cnt = 0;
            for (int w = first + 1; w < nw; w++) { sum += busy[tag][w]; cnt++; }
            double avg = cnt ? sum / cnt / 1e7 : 0;
            t_check(conv >= 0 && conv <= 1 && fabs(avg - share) <= 5,
                    "tag %d idle then burst: first busy window %.1f%% (overshoot %+.1f pp), within 5 pp after %d window(s), then %.1f%%",
                    tag, busy[tag][first] / 1e7, over, conv, avg);
            continue;
        }
        /* after a 2 s warm-up: the 10 s window, and every 1 s window */
        double sum = 0, minw = 1e9;
        int cnt = 0;
        for (int w = 2; w < nw && w < 12; w++) {
            sum += busy[tag][w];
            cnt++;
            if (busy[tag][w] / 1e7 < minw) minw = busy[tag][w] / 1e7;
        }
        double avg = cnt ? sum / cnt / 1e7 : 0;
        double maxw = 0;
        for (int w = 2; w < nw && w < 12; w++)
            if (busy[tag][w] / 1e7 > maxw) maxw = busy[tag][w] / 1e7;
        if (!strcmp(mode, "atleast"))
            t_check(avg >= share - 5 && minw >= 0.9 * share,
                    "tag %d gets at least its %d%%: %.1f%% over %d s after warm-up, lowest 1 s window %.1f%%", tag, share,
                    avg, cnt, minw);
        else if (!strncmp(mode, "atmost", 6)) {
            double least = mode[6] == ':' ? atof(mode + 7) : 0; /* atmost:<least average> */
            t_check(avg <= share + 5 && maxw <= share + 10 && avg >= least,
                    "tag %d stays within its %d%%: %.1f%% over %d s after warm-up (at least %.0f%%), highest 1 s window %.1f%%",
                    tag, share, avg, cnt, least, maxw);
        } else {
            /* every 1 s window at least 90% of the share, under every
             * scheduling model of the fake GPU */
            double floor = 0.9 * share;
            t_check(fabs(avg - share) <= 5 && minw >= floor,
                    "tag %d at %d%%: %.1f%% over %d s after warm-up (within 5 pp), lowest 1 s window %.1f%% (>= %.1f%%)",
                    tag, share, avg, cnt, minw, floor);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "run"))
        return run(atof(argv[2]), strtoull(argv[3], 0, 10), argv[4], argc > 5 ? atof(argv[5]) : 0);
    if (argc >= 4 && !strcmp(argv[1], "analyze")) return analyze(argv[2], argc - 3, argv + 3) || t_failed;
    if (argc >= 7 && !strcmp(argv[1], "pause"))
        return pause_run(atof(argv[2]), atof(argv[3]), atof(argv[4]), strtoull(argv[5], 0, 10), argv[6]);
    if (argc >= 2 && !strcmp(argv[1], "idlegap")) return idlegap() || t_failed;
    if (argc >= 5 && !strcmp(argv[1], "capture")) return capture(atof(argv[2]), strtoull(argv[3], 0, 10), argv[4]) || t_failed;
    if (argc >= 4 && !strcmp(argv[1], "churn")) return churn(atof(argv[2]), strtoull(argv[3], 0, 10)) || t_failed;
    if (argc >= 2 && !strcmp(argv[1], "overlap")) return overlap() || t_failed;
    fprintf(stderr, "usage: limtest run|analyze ...\n");
    return 2;
}
