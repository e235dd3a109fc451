/* RTLD_NEXT probe: a library loaded after libvgpu that looks up the next
 * definition of a symbol it defines itself (as interposers do). */
#define _GNU_SOURCE
#include <dlfcn.h>
int probe_target(void) { return 1; }
int call_next(void)
{
    int (*f)(void) = (int (*)(void))dlsym(RTLD_NEXT, "probe_target");
    return f ? f() : -1;
}
