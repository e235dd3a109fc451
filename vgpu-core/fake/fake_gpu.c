#define _GNU_SOURCE
#include "fake_gpu.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct fg_config fg;
static struct fg_state *st;
static pthread_once_t once = PTHREAD_ONCE_INIT;

uint64_t fg_parse_size(const char *s)
{
    char *e;
    uint64_t v = strtoull(s, &e, 10);
    switch (*e) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    }
    return v;
}

uint64_t fg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fg_sleep_until(uint64_t t)
{
    for (;;) {
        uint64_t now = fg_now();
        if (now >= t) return;
        uint64_t d = t - now;
        struct timespec ts = {(time_t)(d / 1000000000ull), (long)(d % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

/* FAKE_GPU_DEV_<minor>=<pci>,<uuid>,<memory>,<name>; returns 0 if the
 * variable is not one of those or is malformed (then it is ignored). */
static int parse_dev_var(const char *kv, struct fg_dev_cfg *d)
{
    static const char prefix[] = "FAKE_GPU_DEV_";
    if (strncmp(kv, prefix, sizeof prefix - 1)) return 0;
    char *end;
    long minor = strtol(kv + sizeof prefix - 1, &end, 10);
    if (end == kv + sizeof prefix - 1 || *end != '=' || minor < 0 || minor >= FG_MAX_DEV) return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", end + 1);
    char *save = NULL, *pci = strtok_r(buf, ",", &save), *uuid = strtok_r(NULL, ",", &save);
    char *mem = strtok_r(NULL, ",", &save), *name = strtok_r(NULL, "", &save);
    if (!pci || !uuid || !mem) return 0;
    memset(d, 0, sizeof *d);
    snprintf(d->pci, sizeof d->pci, "%s", pci);
    snprintf(d->uuid, sizeof d->uuid, "%s", uuid);
    snprintf(d->name, sizeof d->name, "%s", name ? name : "Fake GPU");
    d->mem = fg_parse_size(mem);
    d->slot = (int)minor;
    return 1;
}

static int by_pci(const void *a, const void *b)
{
    return strcasecmp(((const struct fg_dev_cfg *)a)->pci, ((const struct fg_dev_cfg *)b)->pci);
}

/* The devices given one variable each; 0 if there are none. */
static int load_dev_vars(void)
{
    extern char **environ;
    for (char **e = environ; e && *e && fg.ndev < FG_MAX_DEV; e++) {
        struct fg_dev_cfg d;
        if (!parse_dev_var(*e, &d)) continue;
        int dup = 0;
        for (int i = 0; i < fg.ndev; i++) dup |= fg.dev[i].slot == d.slot;
        if (!dup) fg.dev[fg.ndev++] = d;
    }
    qsort(fg.dev, (size_t)fg.ndev, sizeof fg.dev[0], by_pci);
    return fg.ndev;
}

static void load(void)
{
    if (!load_dev_vars()) {
        const char *v = getenv("FAKE_GPU_COUNT");
        fg.ndev = v ? atoi(v) : 1;
        if (fg.ndev < 0) fg.ndev = 0;
        if (fg.ndev > FG_MAX_DEV) fg.ndev = FG_MAX_DEV;
        const char *mem = getenv("FAKE_GPU_MEM");
        const char *uu = getenv("FAKE_GPU_UUIDS");
        for (int i = 0; i < fg.ndev; i++) {
            fg.dev[i].mem = 16ull << 30;
            fg.dev[i].slot = i;
            snprintf(fg.dev[i].uuid, sizeof fg.dev[i].uuid, "GPU-fa4e0000-0000-0000-0000-0000000000%02d", i);
            snprintf(fg.dev[i].pci, sizeof fg.dev[i].pci, "0000:%02x:00.0", 0x10 + 0x10 * i);
            snprintf(fg.dev[i].name, sizeof fg.dev[i].name, "Fake GPU");
        }
        for (int i = 0; mem && i < fg.ndev; i++) {
            fg.dev[i].mem = fg_parse_size(mem);
            mem = strchr(mem, ',');
            if (mem) mem++;
        }
        for (int i = 0; uu && i < fg.ndev; i++) {
            const char *e = strchr(uu, ',');
            size_t n = e ? (size_t)(e - uu) : strlen(uu);
            if (n >= sizeof fg.dev[i].uuid) n = sizeof fg.dev[i].uuid - 1;
            memcpy(fg.dev[i].uuid, uu, n);
            fg.dev[i].uuid[n] = 0;
            uu = e ? e + 1 : NULL;
        }
    }
    /* CUDA_VISIBLE_DEVICES: host indices or UUIDs, in the order given */
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (!cvd) {
        fg.nvis = fg.ndev;
        for (int i = 0; i < fg.ndev; i++) fg.vis[i] = i;
    } else {
        const char *p = cvd;
        while (*p && fg.nvis < FG_MAX_DEV) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            int idx = -1;
            if (*p >= '0' && *p <= '9') idx = atoi(p);
            else for (int i = 0; i < fg.ndev; i++) if (!strncasecmp(p, fg.dev[i].uuid, n)) idx = i;
            if (idx < 0 || idx >= fg.ndev) break; /* like CUDA: stop at the first invalid entry */
            fg.vis[fg.nvis++] = idx;
            if (!e) break;
            p = e + 1;
        }
    }
    const char *v = getenv("FAKE_KERNEL_NS");
    fg.kernel_ns = v ? strtoull(v, 0, 10) : 0;
    v = getenv("FAKE_WORK_TAG");
    fg.tag = v ? atoi(v) & 7 : 0;

    char path[512];
    v = getenv("FAKE_GPU_STATE");
    if (v && *v) snprintf(path, sizeof path, "%s", v);
    else snprintf(path, sizeof path, "/tmp/fakegpu-%d.state", (int)getuid());
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    void *m = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, sizeof(struct fg_state)) == 0)
        m = mmap(NULL, sizeof(struct fg_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd >= 0) close(fd);
    if (m == MAP_FAILED) {
        m = mmap(NULL, sizeof(struct fg_state), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        fprintf(stderr, "fake gpu: state file %s unusable, state is private\n", path);
    }
    st = m;
    uint32_t zero = 0;
    __atomic_compare_exchange_n(&st->magic, &zero, FG_MAGIC, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

void fg_init(void) { pthread_once(&once, load); }
struct fg_state *fg_state(void) { fg_init(); return st; }
struct fg_dev_state *fg_dev(int dev) { fg_init(); return &st->dev[fg.dev[dev].slot]; }

int fg_phys_alloc(int dev, uint64_t bytes)
{
    fg_init();
    uint64_t *u = &fg_dev(dev)->phys_used, old = __atomic_load_n(u, __ATOMIC_RELAXED), nw;
    do {
        if (bytes > fg.dev[dev].mem || old > fg.dev[dev].mem - bytes) return -1;
        nw = old + bytes;
    } while (!__atomic_compare_exchange_n(u, &old, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    uint64_t pk = __atomic_load_n(&fg_dev(dev)->peak_used, __ATOMIC_RELAXED);
    while (nw > pk && !__atomic_compare_exchange_n(&fg_dev(dev)->peak_used, &pk, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
    return 0;
}

void fg_phys_free(int dev, uint64_t bytes)
{
    fg_init();
    __atomic_sub_fetch(&fg_dev(dev)->phys_used, bytes, __ATOMIC_SEQ_CST);
}

/* One kernel at a time per device, in submission order across processes:
 * contexts of different processes time-slice at kernel granularity. */
uint64_t fg_run(int dev, uint64_t not_before, uint64_t dur)
{
    fg_init();
    struct fg_dev_state *d = fg_dev(dev);
    uint64_t now = fg_now(), tail = __atomic_load_n(&d->tail_ns, __ATOMIC_RELAXED), start, end;
    do {
        start = tail > now ? tail : now;
        if (not_before > start) start = not_before;
        end = start + dur;
    } while (!__atomic_compare_exchange_n(&d->tail_ns, &tail, end, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    __atomic_add_fetch(&d->busy_ns[fg.tag], dur, __ATOMIC_RELAXED);
    uint64_t i = __atomic_fetch_add(&st->trace_next, 1, __ATOMIC_RELAXED) % FG_TRACE_LEN;
    st->trace[i] = (struct fg_trace){start, end, (uint32_t)fg.tag, (uint32_t)dev};
    return end;
}
