/* Every kernel launch path. Without a compute limit the hook is one load and
 * one predictable branch in front of the driver call. */
#include "config.h"
#include "dispatch.h"
#include "limiter.h"
#include "memacct.h"

/* In the _ptsz variants a NULL stream is the calling thread's default stream:
 * the limiter's events must go there, not to the legacy stream. */
#define PTSZ(s) ((s) ? (s) : CU_STREAM_PER_THREAD)

#define LAUNCH(stream, call)                                             \
    do {                                                                 \
        if (__builtin_expect(vgpu_lim_active, 0)) {                      \
            vgpu_lim_before_launch(stream);                              \
            CUresult r_ = call;                                          \
            vgpu_lim_after_launch(stream, r_);                           \
            return r_;                                                   \
        }                                                                \
        return call;                                                     \
    } while (0)

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                    unsigned by, unsigned bz, unsigned shm, CUstream s, void **params, void **extra)
{
    LAUNCH(s, REAL(cuLaunchKernel)(f, gx, gy, gz, bx, by, bz, shm, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                         unsigned by, unsigned bz, unsigned shm, CUstream s, void **params,
                                         void **extra)
{
    LAUNCH(PTSZ(s), REAL(cuLaunchKernel_ptsz)(f, gx, gy, gz, bx, by, bz, shm, s, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra)
{
    LAUNCH(cfg ? cfg->hStream : 0, REAL(cuLaunchKernelEx)(cfg, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra)
{
    LAUNCH(PTSZ(cfg ? cfg->hStream : 0), REAL(cuLaunchKernelEx_ptsz)(cfg, f, params, extra));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                               unsigned by, unsigned bz, unsigned shm, CUstream s, void **params)
{
    LAUNCH(s, REAL(cuLaunchCooperativeKernel)(f, gx, gy, gz, bx, by, bz, shm, s, params));
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                                    unsigned bx, unsigned by, unsigned bz, unsigned shm,
                                                    CUstream s, void **params)
{
    LAUNCH(PTSZ(s), REAL(cuLaunchCooperativeKernel_ptsz)(f, gx, gy, gz, bx, by, bz, shm, s, params));
}

/* A graph's first launch is where the driver reserves memory for its memory
 * nodes (procmem.c charges it). */
static CUresult graph_launched(CUgraphExec g, CUresult r)
{
    if (r == CUDA_SUCCESS && __builtin_expect(vgpu_cfg.mem_any, 0)) vgpu_procmem_graph_launched(g);
    return r;
}
VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s) { LAUNCH(s, graph_launched(g, REAL(cuGraphLaunch)(g, s))); }
VGPU_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    LAUNCH(PTSZ(s), graph_launched(g, REAL(cuGraphLaunch_ptsz)(g, s)));
}
