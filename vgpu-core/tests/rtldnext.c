/* dlsym(RTLD_NEXT) must stay relative to its caller under libvgpu's dlsym. */
#include "tutil.h"
int call_next(void);
int main(void)
{
    int v = call_next();
    t_check(v == 2, "dlsym(RTLD_NEXT) from a library after libvgpu finds the next library's symbol (%d)", v);
    return t_failed != 0;
}
