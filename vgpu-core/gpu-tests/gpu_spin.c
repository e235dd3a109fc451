/* Saturating CUDA workload for the compute-share tests on a real GPU: a PTX
 * kernel (no nvcc needed) whose blocks spin on %globaltimer for a given time,
 * launched back to back for a given wall time. Prints the completed GPU work
 * as a share of the wall time: completed kernels x kernel time / elapsed.
 *   gpu_spin <seconds> <kernel_us> [kernel|graph] */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

CUresult cuModuleLoadData(CUmodule *m, const void *image);
CUresult cuDeviceGetAttribute(int *v, int attrib, CUdevice d);
CUresult cuStreamBeginCapture_v2(CUstream s, int mode);
CUresult cuStreamEndCapture(CUstream s, void **graph);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, void *graph, unsigned long long flags);

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
        void *g;
        CK(cuStreamBeginCapture_v2(s, 0));
        CK(cuLaunchKernel(f, (unsigned)sms, 1, 1, 32, 1, 1, 0, s, params, NULL));
        CK(cuStreamEndCapture(s, &g));
        CK(cuGraphInstantiateWithFlags(&ge, g, 0));
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
