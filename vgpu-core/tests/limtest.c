/* Compute-limiter workloads and their analysis.
 *   limtest run <seconds> <kernel_us> <path> [idle_first_s]
 *       saturate the (fake) GPU with kernels of kernel_us, launched through
 *       path: linked | graph | procaddr | ex; optionally idle first.
 *   limtest analyze <state file> <tag>:<share>[:<mode>]...
 *       per-1 s GPU share of each tag from the fake GPU's trace of completed
 *       work; asserts the targets. mode: exact (default), atleast, burst. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "tutil.h"
#include "../fake/fake_gpu.h"
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
    if (idle_first > 0) usleep((useconds_t)(idle_first * 1e6));
    uint64_t end = now_ns() + (uint64_t)((secs - (idle_first > 0 ? idle_first : 0)) * 1e9);
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hStream = s;
    long n = 0;
    const char *gap = getenv("LIMTEST_GAP_US"); /* CPU time between launches, like a framework's host code */
    uint64_t gap_ns = gap ? strtoull(gap, 0, 10) * 1000 : 0;
    while (now_ns() < end) {
        if (gap_ns) { uint64_t g = now_ns() + gap_ns; while (now_ns() < g) ; }
        if (!strcmp(path, "graph")) cuGraphLaunch((CUgraphExec)&dur, s);
        else if (!strcmp(path, "ex")) cuLaunchKernelEx(&cfg, f, params, NULL);
        else launch(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
        n++;
    }
    cuStreamSynchronize(s);
    printf("# launched %ld kernels of %llu us via %s\n", n, (unsigned long long)kernel_us, path);
    return NULL;
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
        char mode[16] = "exact";
        if (sscanf(argv[k], "%d:%d:%15s", &tag, &share, mode) < 2) return 2;
        printf("# tag %d (share %d%%, %s) per 1 s window:", tag, share, mode);
        for (int w = 0; w < nw; w++) printf(" %.1f", busy[tag][w] / 1e7);
        printf("\n");
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
        if (!strcmp(mode, "atleast"))
            t_check(avg >= share - 5 && minw >= 0.9 * share,
                    "tag %d gets at least its %d%%: %.1f%% over %d s after warm-up, lowest 1 s window %.1f%%", tag, share,
                    avg, cnt, minw);
        else
            t_check(fabs(avg - share) <= 5 && minw >= 0.9 * share,
                    "tag %d at %d%%: %.1f%% over %d s after warm-up (within 5 pp), lowest 1 s window %.1f%% (>= 90%% of share)",
                    tag, share, avg, cnt, minw);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "run"))
        return run(atof(argv[2]), strtoull(argv[3], 0, 10), argv[4], argc > 5 ? atof(argv[5]) : 0);
    if (argc >= 4 && !strcmp(argv[1], "analyze")) return analyze(argv[2], argc - 3, argv + 3) || t_failed;
    fprintf(stderr, "usage: limtest run|analyze ...\n");
    return 2;
}
