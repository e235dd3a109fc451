/* ctortest <want>: allocations made from another library's constructor,
 * before libvgpu's own constructor has run, are limited all the same. */
#include "vgpu_cuda.h"
#include "tutil.h"

extern int ctor_fit;
extern CUresult ctor_last;

int main(int argc, char **argv)
{
    int want = argc > 1 ? atoi(argv[1]) : 0;
    t_check(ctor_fit == want && ctor_last == CUDA_ERROR_OUT_OF_MEMORY,
            "allocations from a library constructor: %d x 256 MiB fit (want %d), then %d", ctor_fit, want, ctor_last);
    return t_failed != 0;
}
