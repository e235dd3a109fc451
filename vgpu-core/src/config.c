#include "config.h"
#include "log.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct vgpu_config vgpu_cfg;

uint64_t vgpu_parse_size(const char *s)
{
    if (!s || !*s) return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s) return 0;
    uint64_t mul = 1;
    switch (*end) {
    case 0: break;
    case 'k': case 'K': mul = 1ULL << 10; end++; break;
    case 'm': case 'M': mul = 1ULL << 20; end++; break;
    case 'g': case 'G': mul = 1ULL << 30; end++; break;
    default: return 0;
    }
    if (*end == 'i' || *end == 'b' || *end == 'B') end++; /* tolerate "Mi", "GB" */
    if (*end) return 0;
    if (v > UINT64_MAX / mul) return 0;
    return (uint64_t)v * mul;
}

static int parse_percent(const char *s)
{
    if (!s || !*s) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0) return -1;
    return v > 100 ? 100 : (int)v;
}

static void copy_env(char *dst, size_t n, const char *name, const char *dflt)
{
    const char *v = getenv(name);
    snprintf(dst, n, "%s", v && *v ? v : dflt);
}

void vgpu_config_load(void)
{
    struct vgpu_config *c = &vgpu_cfg;
    memset(c, 0, sizeof *c);
    const char *lv = getenv("LIBCUDA_LOG_LEVEL");
    if (lv && *lv) vgpu_log_level = atoi(lv);

    char name[64];
    const char *v = getenv("CUDA_DEVICE_MEMORY_LIMIT");
    if (v && *v) {
        c->mem_default = vgpu_parse_size(v);
        if (!c->mem_default) LOG_ERR("ignoring unparsable CUDA_DEVICE_MEMORY_LIMIT=%s", v);
    }
    c->sm_default = parse_percent(getenv("CUDA_DEVICE_SM_LIMIT"));
    c->mem_any = c->mem_default != 0;
    c->sm_any = c->sm_default >= 0 && c->sm_default < 100;
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        v = getenv(name);
        if (v && *v) {
            c->mem_limit[i] = vgpu_parse_size(v);
            if (!c->mem_limit[i]) LOG_ERR("ignoring unparsable %s=%s", name, v);
        }
        c->mem_any |= c->mem_limit[i] != 0;
        snprintf(name, sizeof name, "CUDA_DEVICE_SM_LIMIT_%d", i);
        c->sm_limit[i] = parse_percent(getenv(name));
        c->sm_any |= c->sm_limit[i] >= 0 && c->sm_limit[i] < 100;
    }

    v = getenv("VGPU_COMPUTE_POLICY");
    c->compute_policy = (v && !strcasecmp(v, "besteffort")) ? VGPU_POLICY_BESTEFFORT : VGPU_POLICY_HARD;
    v = getenv("GPU_CORE_UTILIZATION_POLICY");
    c->util_policy = VGPU_UTIL_DEFAULT;
    if (v && !strcasecmp(v, "force")) c->util_policy = VGPU_UTIL_FORCE;
    if (v && !strcasecmp(v, "disable")) c->util_policy = VGPU_UTIL_DISABLE;
    if (c->util_policy == VGPU_UTIL_FORCE) c->compute_policy = VGPU_POLICY_HARD;
    if (c->util_policy == VGPU_UTIL_DISABLE) c->sm_any = 0;

    v = getenv("VGPU_DEVICE_UUIDS");
    if (v && *v) {
        const char *p = v;
        while (*p && c->n_uuids < VGPU_MAX_DEVICES) {
            const char *e = strchr(p, ',');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            while (len && isspace((unsigned char)*p)) { p++; len--; }
            while (len && isspace((unsigned char)p[len - 1])) len--;
            if (len >= VGPU_UUID_LEN) len = VGPU_UUID_LEN - 1;
            memcpy(c->uuids[c->n_uuids], p, len);
            c->uuids[c->n_uuids][len] = 0;
            c->n_uuids++;
            if (!e) break;
            p = e + 1;
        }
    }
    copy_env(c->region_path, sizeof c->region_path, "CUDA_DEVICE_MEMORY_SHARED_CACHE", "/tmp/cudevshr.cache");
    copy_env(c->gpu_state_dir, sizeof c->gpu_state_dir, "VGPU_GPU_STATE_DIR", "");
    v = getenv("VGPU_TEST_PAUSE_IN_LOCK_MS");
    c->test_pause_ms = v ? atoi(v) : 0;
    copy_env(c->test_pause_file, sizeof c->test_pause_file, "VGPU_TEST_PAUSE_FILE", "");
}

int vgpu_config_uuid_index(const char *uuid)
{
    for (int i = 0; i < vgpu_cfg.n_uuids; i++)
        if (!strcasecmp(vgpu_cfg.uuids[i], uuid)) return i;
    return -1;
}

uint64_t vgpu_config_mem_limit(int qidx)
{
    if (qidx >= 0 && qidx < VGPU_MAX_DEVICES && vgpu_cfg.mem_limit[qidx]) return vgpu_cfg.mem_limit[qidx];
    return vgpu_cfg.mem_default;
}

int vgpu_config_sm_limit(int qidx)
{
    if (vgpu_cfg.util_policy == VGPU_UTIL_DISABLE) return 100;
    int v = -1;
    if (qidx >= 0 && qidx < VGPU_MAX_DEVICES) v = vgpu_cfg.sm_limit[qidx];
    if (v < 0) v = vgpu_cfg.sm_default;
    return v < 0 ? 100 : v;
}
