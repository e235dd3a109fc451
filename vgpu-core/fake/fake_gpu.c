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

static void load(void)
{
    const char *v = getenv("FAKE_GPU_COUNT");
    fg.ndev = v ? atoi(v) : 1;
    if (fg.ndev < 0) fg.ndev = 0;
    if (fg.ndev > FG_MAX_DEV) fg.ndev = FG_MAX_DEV;
    const char *mem = getenv("FAKE_GPU_MEM");
    const char *uu = getenv("FAKE_GPU_UUIDS");
    for (int i = 0; i < fg.ndev; i++) {
        fg.dev[i].mem = 16ull << 30;
        snprintf(fg.dev[i].uuid, sizeof fg.dev[i].uuid, "GPU-fa4e0000-0000-0000-0000-0000000000%02d", i);
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
    v = getenv("FAKE_KERNEL_NS");
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

int fg_phys_alloc(int dev, uint64_t bytes)
{
    fg_init();
    uint64_t *u = &st->dev[dev].phys_used, old = __atomic_load_n(u, __ATOMIC_RELAXED), nw;
    do {
        if (bytes > fg.dev[dev].mem || old > fg.dev[dev].mem - bytes) return -1;
        nw = old + bytes;
    } while (!__atomic_compare_exchange_n(u, &old, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    uint64_t pk = __atomic_load_n(&st->dev[dev].peak_used, __ATOMIC_RELAXED);
    while (nw > pk && !__atomic_compare_exchange_n(&st->dev[dev].peak_used, &pk, nw, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
    return 0;
}

void fg_phys_free(int dev, uint64_t bytes)
{
    fg_init();
    __atomic_sub_fetch(&st->dev[dev].phys_used, bytes, __ATOMIC_SEQ_CST);
}

/* One kernel at a time per device, in submission order across processes:
 * contexts of different processes time-slice at kernel granularity. */
uint64_t fg_run(int dev, uint64_t not_before, uint64_t dur)
{
    fg_init();
    struct fg_dev_state *d = &st->dev[dev];
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
