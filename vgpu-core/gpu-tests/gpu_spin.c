/* Saturating CUDA workload for the compute-share tests on a real GPU: a PTX
 * kernel (no nvcc needed) whose blocks spin on %globaltimer for a given time,
 * launched back to back for a given wall time. Prints the completed GPU work
 * as a share of the wall time: completed kernels x kernel time / elapsed.
 *   gpu_spin <seconds> <kernel_us> [kernel|graph]
 *   gpu_spin <seconds> <kernel_us> pause <busy_s> <idle_s>
 *       busy, idle (no synchronisation), busy again; prints the share of
 *       the first second after the pause and how long the first launch after
 *       it waited
 *   gpu_spin <seconds> 0 overhead
 *       empty kernels back to back: ns per launch (run with and without a
 *       share to see the limiter's cost on a real driver) */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

CUresult cuModuleLoadData(CUmodule *m, const void *image);
CUresult cuDeviceGetAttribute(int *v, int attrib, CUdevice d);

static const char ptx[] =
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry spin(.param .u64 ns)\n{\n"
    "  .reg .u64 %rd<5>;\n  .reg .pred %p;\n"
    "  ld.param.u64 %rd1, [ns];\n  mov.u64 %rd2, %globaltimer;\n"
    "LOOP:\n  mov.u64 %rd3, %globaltimer;\n  sub.u64 %rd4, %rd3, %rd2;\n"
    "  setp.lt.u64 %p, %rd4, %rd1;\n  @%p bra LOOP;\n  ret;\n}\n";

#define CK(x) do { CUresult r_ = (x); if (r_) { fprintf(stderr, "%s -> %d\n", #x, r_); exit(1); } } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 10;
    unsigned long long ns = (argc > 2 ? strtoull(argv[2], 0, 10) : 500) * 1000ull;
    int graph = argc > 3 && !strcmp(argv[3], "graph");
    CUcontext c;
    CUmodule m;
    CUfunction f;
    CUstream s;
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&c, 0));
    CK(cuCtxSetCurrent(c));
    CK(cuModuleLoadData(&m, ptx));
    CK(cuModuleGetFunction(&f, m, "spin"));
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    int sms = 0;
    cuDeviceGetAttribute(&sms, 16 /* MULTIPROCESSOR_COUNT */, 0);
    void *params[] = {&ns};
    CUgraphExec ge = NULL;
    if (graph) {
        CUgraph g;
        CK(cuStreamBeginCapture_v2(s, 0));
        CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL));
        CK(cuStreamEndCapture(s, &g));
        CK(cuGraphInstantiateWithFlags(&ge, g, 0));
    }
    if (argc > 3 && !strcmp(argv[3], "overhead")) {
        /* launch cost: an empty grid, synchronised every 1000 launches */
        unsigned long long zero = 0;
        void *zp[] = {&zero};
        long k = 0;
        double t0 = now(), end = t0 + secs;
        while (now() < end) {
            for (int i = 0; i < 1000; i++) CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, zp, NULL));
            CK(cuStreamSynchronize(s));
            k += 1000;
        }
        printf("overhead: %ld empty launches, %.0f ns per launch\n", k, (now() - t0) * 1e9 / k);
        return 0;
    }
    if (argc > 5 && !strcmp(argv[3], "pause")) {
        double busy = atof(argv[4]), idle = atof(argv[5]);
        double e1 = now() + busy;
        while (now() < e1) CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL));
        struct timespec ts = {(time_t)idle, (long)((idle - (time_t)idle) * 1e9)};
        nanosleep(&ts, NULL);
        double r0 = now();
        CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL));
        double first = now() - r0;
        long k = 1;
        while (now() < r0 + 1.0) { CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL)); k++; }
        CK(cuStreamSynchronize(s));
        double wall = now() - r0;
        printf("pause: after %.1f s idle the first launch waited %.1f ms; GPU share %.1f%% in the %.2f s after\n", idle,
               first * 1e3, 100.0 * k * ns / 1e9 / wall, wall);
        return 0;
    }
    double t0 = now(), end = t0 + secs;
    long n = 0;
    while (now() < end) {
        if (graph) CK(cuGraphLaunch(ge, s));
        else CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL));
        n++;
    }
    CK(cuStreamSynchronize(s));
    double wall = now() - t0;
    printf("spin: %ld kernels of %llu us in %.2f s: GPU share %.1f%%\n", n, ns / 1000, wall, 100.0 * n * ns / 1e9 / wall);
    return 0;
}
