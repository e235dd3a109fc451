/* A library whose constructor allocates device memory, as some frameworks'
 * static initialisers do. Linked into tests/ctortest, whose own loading
 * order runs this constructor before libvgpu's (a preloaded library is
 * initialised after the program's own dependencies). */
#include "vgpu_cuda.h"

int ctor_fit = -1;
CUresult ctor_last;

__attribute__((constructor)) static void allocate_early(void)
{
    CUcontext c;
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&c, 0) || cuCtxSetCurrent(c)) return;
    CUdeviceptr p;
    ctor_fit = 0;
    while (ctor_fit < 64 && (ctor_last = cuMemAlloc_v2(&p, 256ull << 20)) == CUDA_SUCCESS) ctor_fit++;
}
