#include "log.h"
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

int vgpu_log_level = VGPU_LOG_WARN;

void vgpu_log_emit(int level, const char *fmt, ...)
{
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG", "DEBUG"};
    char buf[512];
    int n = snprintf(buf, sizeof buf, "[libvgpu %d %s] ", (int)getpid(),
                     names[level < 0 ? 0 : level > 4 ? 4 : level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && n < (int)sizeof buf)
        n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof buf - 1) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    /* one write() so lines from several processes do not interleave */
    ssize_t w = write(2, buf, (size_t)n);
    (void)w;
}
