/* Small helpers for the test programs: TAP-like "ok"/"not ok" lines that
 * tests/run_tests.sh counts. */
#ifndef TUTIL_H
#define TUTIL_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int t_failed;
static void t_check(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void t_check(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - ", cond ? "ok" : "not ok");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (!cond) t_failed++;
}
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#endif
