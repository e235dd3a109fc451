/* Logging to stderr. The level is read once at load (config.c); the macro
 * tests a plain int so disabled messages cost one branch, no getenv. */
#ifndef VGPU_LOG_H
#define VGPU_LOG_H
#define VGPU_LOG_ERROR 0
#define VGPU_LOG_WARN 1
#define VGPU_LOG_INFO 2
#define VGPU_LOG_DEBUG 3
extern int vgpu_log_level;
void vgpu_log_emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define vgpu_log(level, ...) \
    do { if ((level) <= vgpu_log_level) vgpu_log_emit((level), __VA_ARGS__); } while (0)
#define LOG_ERR(...) vgpu_log(VGPU_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) vgpu_log(VGPU_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) vgpu_log(VGPU_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) vgpu_log(VGPU_LOG_DEBUG, __VA_ARGS__)
#endif
