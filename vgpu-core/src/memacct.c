#define _GNU_SOURCE
#include "memacct.h"
#include "log.h"
#include "region.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void test_pause(void)
{
    /* test hook: lets the robustness test SIGKILL us inside the section */
    if (vgpu_cfg.test_pause_file[0]) {
        int fd = open(vgpu_cfg.test_pause_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
    }
    usleep((useconds_t)vgpu_cfg.test_pause_ms * 1000);
}

int vgpu_mem_reserve(struct vgpu_dev *d, uint64_t bytes)
{
    int di = vgpu_dev_region_index(d);
    struct vgpu_region *r = vgpu_region_lock();
    int slot = vgpu_region_my_slot();
    if (di < 0 || slot < 0) { vgpu_region_unlock(); return -1; } /* fail closed */
    uint64_t *total = &r->dev[di].mem_used;
    int ok = 0;
    for (int attempt = 0; attempt < 2 && !ok; attempt++) {
        uint64_t used = __atomic_load_n(total, __ATOMIC_RELAXED);
        /* written so that nothing can wrap: used may exceed the limit after a
         * limit change, bytes may be huge */
        if (used <= d->mem_limit && bytes <= d->mem_limit - used) ok = 1;
        else if (attempt == 0 && vgpu_region_reclaim_dead() == 0) break;
    }
    if (ok) {
        /* slot first, then total: repair() recomputes totals from slots */
        __atomic_add_fetch(&r->slot[slot].used[di], bytes, __ATOMIC_SEQ_CST);
        if (__builtin_expect(vgpu_cfg.test_pause_ms > 0, 0)) test_pause();
        __atomic_add_fetch(total, bytes, __ATOMIC_SEQ_CST);
    }
    vgpu_region_unlock();
    if (!ok)
        LOG_INFO("refusing %llu bytes on %s: %llu of %llu in use", (unsigned long long)bytes, d->uuid,
                 (unsigned long long)__atomic_load_n(total, __ATOMIC_RELAXED), (unsigned long long)d->mem_limit);
    return ok ? 0 : -1;
}

void vgpu_mem_unreserve(struct vgpu_dev *d, uint64_t bytes)
{
    int di = d->region_dev;
    if (di < 0) return;
    struct vgpu_region *r = vgpu_region_lock();
    int slot = vgpu_region_my_slot();
    if (slot >= 0) {
        /* clamp: never underflow into absurd free sizes */
        uint64_t s = r->slot[slot].used[di], t = r->dev[di].mem_used;
        __atomic_store_n(&r->slot[slot].used[di], s > bytes ? s - bytes : 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&r->dev[di].mem_used, t > bytes ? t - bytes : 0, __ATOMIC_SEQ_CST);
    }
    vgpu_region_unlock();
}

uint64_t vgpu_mem_used(struct vgpu_dev *d)
{
    int di = vgpu_dev_region_index(d);
    if (di < 0) return 0;
    return __atomic_load_n(&vgpu_region_get()->dev[di].mem_used, __ATOMIC_SEQ_CST);
}

void vgpu_mem_maybe_reclaim(void)
{
    static uint64_t last;
    uint64_t now = now_ns();
    if (now - __atomic_load_n(&last, __ATOMIC_RELAXED) < 1000000000ull) return;
    __atomic_store_n(&last, now, __ATOMIC_RELAXED);
    vgpu_region_lock();
    vgpu_region_reclaim_dead();
    vgpu_region_unlock();
}

/* ---- process-local allocation table: open addressing, linear probing ---- */
struct entry { uint64_t key; uint64_t bytes; struct vgpu_dev *dev; int kind; int state; };
enum { EMPTY = 0, FULL = 1, TOMB = 2 };
static struct { pthread_mutex_t mu; struct entry *e; size_t cap, n, tombs; } T = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0};

static size_t hash(int kind, uint64_t key)
{
    uint64_t x = key ^ ((uint64_t)kind << 56);
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33;
    return (size_t)x;
}

static void insert_nolock(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes);

static void grow(void)
{
    size_t oldcap = T.cap;
    struct entry *old = T.e;
    size_t cap = oldcap ? oldcap * 2 : 1024;
    if (T.n * 4 < oldcap) cap = oldcap; /* mostly tombstones: rehash in place size */
    struct entry *e = calloc(cap, sizeof *e);
    if (!e) { LOG_ERR("out of host memory for the allocation table"); return; }
    T.e = e; T.cap = cap; T.n = 0; T.tombs = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].state == FULL) insert_nolock(old[i].kind, old[i].key, old[i].dev, old[i].bytes);
    free(old);
}

static void insert_nolock(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes)
{
    if ((T.n + T.tombs + 1) * 4 >= T.cap * 3) grow();
    if (!T.cap) return;
    size_t m = T.cap - 1, i = hash(kind, key) & m;
    while (T.e[i].state == FULL) i = (i + 1) & m;
    if (T.e[i].state == TOMB) T.tombs--;
    T.e[i] = (struct entry){key, bytes, d, kind, FULL};
    T.n++;
}

void vgpu_mem_track(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes)
{
    pthread_mutex_lock(&T.mu);
    insert_nolock(kind, key, d, bytes);
    pthread_mutex_unlock(&T.mu);
}

int vgpu_mem_take(int kind, uint64_t key, struct vgpu_dev **dout, uint64_t *bout)
{
    struct vgpu_dev *d = NULL;
    uint64_t bytes = 0;
    pthread_mutex_lock(&T.mu);
    if (T.cap) {
        size_t m = T.cap - 1, i = hash(kind, key) & m;
        while (T.e[i].state != EMPTY) {
            if (T.e[i].state == FULL && T.e[i].key == key && T.e[i].kind == kind) {
                d = T.e[i].dev; bytes = T.e[i].bytes;
                T.e[i].state = TOMB; T.n--; T.tombs++;
                break;
            }
            i = (i + 1) & m;
        }
    }
    pthread_mutex_unlock(&T.mu);
    if (!d) return 0;
    if (dout) *dout = d;
    if (bout) *bout = bytes;
    return 1;
}

void vgpu_memacct_atfork_child(void)
{
    /* the parent's allocations are not the child's */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    T.mu = fresh;
    free(T.e);
    T.e = NULL; T.cap = T.n = T.tombs = 0;
}
