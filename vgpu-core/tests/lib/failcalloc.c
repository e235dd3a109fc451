/* Preloaded ahead of libvgpu: calloc fails for requests of at least
 * VT_FAIL_CALLOC_MIN bytes, so that libvgpu's allocation table cannot grow
 * past its first size. */
#include <stdlib.h>
#include <string.h>

void *calloc(size_t n, size_t size)
{
    const char *v = getenv("VT_FAIL_CALLOC_MIN");
    size_t min = v ? strtoull(v, NULL, 10) : 0;
    if (size && n > (size_t)-1 / size) return NULL;
    if (min && n * size >= min) return NULL;
    /* through a volatile pointer: the compiler would turn malloc+memset
     * back into a call to calloc, this very function */
    void *(*volatile alloc)(size_t) = malloc;
    void *p = alloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}
