/* Times driver calls in this process; run_bench.sh runs it without libvgpu,
 * with libvgpu and no limit, and with limits, and prints them side by side.
 * Output: one "name ns_per_call" line per measurement (best of 7 rounds). */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define BEST(name, iters, body)                                         \
    do {                                                                \
        double best = 1e30;                                             \
        for (int round = 0; round < 7; round++) {                       \
            double t0 = now();                                          \
            for (long i = 0; i < (iters); i++) { body; }                \
            double ns = (now() - t0) / (iters);                         \
            if (ns < best) best = ns;                                   \
        }                                                               \
        printf("%s %.1f\n", name, best);                                \
    } while (0)

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : "";
    /* BENCH_LAUNCHES: launches per round (default 2M; fewer on a loaded machine) */
    const char *nl = getenv("BENCH_LAUNCHES");
    long launches = nl && atol(nl) > 0 ? atol(nl) : 2000000;
    CUcontext c;
    CUfunction f;
    cuInit(0);
    cuCtxCreate_v2(&c, 0, 0);
    cuModuleGetFunction(&f, NULL, "empty");
    if (!*only || strstr(only, "launch")) {
        BEST("cuLaunchKernel", launches, cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
        CUstream s;
        cuStreamCreate(&s, 0);
        BEST("cuLaunchKernel_stream", launches, cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
    }
    if (!*only || strstr(only, "alloc")) {
        CUdeviceptr p;
        BEST("cuMemAlloc_v2+cuMemFree_v2", 20000, cuMemAlloc_v2(&p, 1 << 20); cuMemFree_v2(p));
        size_t fr, tot;
        BEST("cuMemGetInfo_v2", 200000, cuMemGetInfo_v2(&fr, &tot));
    }
    return 0;
}
