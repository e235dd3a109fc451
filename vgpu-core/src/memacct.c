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

static int reserve_once(struct vgpu_dev *d, uint64_t bytes, int force)
{
    int di = vgpu_dev_region_index(d);
    struct vgpu_region *r = vgpu_region_lock();
    int slot = vgpu_region_my_slot();
    if (di < 0 || slot < 0) { vgpu_region_unlock(); return -1; } /* fail closed */
    uint64_t *total = &r->dev[di].mem_used;
    int ok = force;
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
    return ok ? 0 : -1;
}

int vgpu_mem_reserve(struct vgpu_dev *d, uint64_t bytes)
{
    vgpu_procmem_sync(d, 0); /* driver memory no hook saw, if due */
    if (reserve_once(d, bytes, 0) == 0) return 0;
    /* that memory may have gone since it was last read */
    if (vgpu_procmem_sync(d, 1) && reserve_once(d, bytes, 0) == 0) return 0;
    /* pools of this process may have released memory since we last looked */
    if (vgpu_pools_sync(1) && reserve_once(d, bytes, 0) == 0) return 0;
    /* and stream-ordered frees may have run */
    if (vgpu_deferred_frees_poll() && reserve_once(d, bytes, 0) == 0) return 0;
    int di = d->region_dev;
    LOG_INFO("refusing %llu bytes on %s: %llu of %llu in use", (unsigned long long)bytes, d->uuid,
             di >= 0 ? (unsigned long long)__atomic_load_n(&vgpu_region_get()->dev[di].mem_used, __ATOMIC_RELAXED) : 0ull,
             (unsigned long long)d->mem_limit);
    return -1;
}

int vgpu_mem_reserve_nosync(struct vgpu_dev *d, uint64_t bytes) { return reserve_once(d, bytes, 0); }

void vgpu_mem_charge(struct vgpu_dev *d, uint64_t bytes)
{
    if (bytes && reserve_once(d, bytes, 1) != 0)
        LOG_ERR("cannot record %llu bytes the driver took on %s", (unsigned long long)bytes, d->uuid);
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

uint64_t vgpu_mem_mine(struct vgpu_dev *d)
{
    int di = vgpu_dev_region_index(d);
    if (di < 0) return 0;
    struct vgpu_region *r = vgpu_region_lock();
    int slot = vgpu_region_my_slot();
    uint64_t v = slot >= 0 ? __atomic_load_n(&r->slot[slot].used[di], __ATOMIC_SEQ_CST) : 0;
    vgpu_region_unlock();
    return v;
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

/* ---- process-local allocation table: open addressing, linear probing ----
 * Invariant: FULL + TOMB + booked entries stay below 3/4 of the capacity, so
 * every probe sequence meets an EMPTY entry and every loop ends, whether or
 * not growing the table (calloc) succeeds. */
struct entry {
    uint64_t key, bytes, aux;
    struct vgpu_dev *dev;
    int kind, state;
    uint32_t maps;     /* VGPU_KIND_VMM: live mappings */
    int released;      /* VGPU_KIND_VMM: cuMemRelease'd while mapped */
};
enum { EMPTY = 0, FULL = 1, TOMB = 2 };
static struct { pthread_mutex_t mu; struct entry *e; size_t cap, n, tombs, booked; } T = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0};

static size_t hash(int kind, uint64_t key)
{
    uint64_t x = key ^ ((uint64_t)kind << 56);
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33;
    return (size_t)x;
}

static int fits(size_t extra) { return (T.n + T.tombs + T.booked + extra) * 4 < T.cap * 3; }

static struct entry *slot_for(int kind, uint64_t key)
{
    size_t m = T.cap - 1, i = hash(kind, key) & m;
    while (T.e[i].state == FULL) i = (i + 1) & m;
    if (T.e[i].state == TOMB) T.tombs--;
    return &T.e[i];
}

/* Rehash into a table of cap entries; -1 (nothing changed) without memory. */
static int rehash(size_t cap)
{
    struct entry *e = calloc(cap, sizeof *e);
    if (!e) return -1;
    struct entry *old = T.e;
    size_t oldcap = T.cap;
    T.e = e; T.cap = cap; T.n = 0; T.tombs = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].state == FULL) { *slot_for(old[i].kind, old[i].key) = old[i]; T.n++; }
    free(old);
    return 0;
}

int vgpu_mem_book(void)
{
    pthread_mutex_lock(&T.mu);
    if (!fits(1)) {
        /* mostly tombstones: same size; else double */
        size_t cap = !T.cap ? 1024 : (T.n + T.booked + 1) * 2 < T.cap ? T.cap : T.cap * 2;
        if (rehash(cap) != 0) LOG_ERR("out of host memory for the allocation table");
    }
    int ok = fits(1);
    if (ok) T.booked++;
    pthread_mutex_unlock(&T.mu);
    return ok ? 0 : -1;
}

void vgpu_mem_unbook(void)
{
    pthread_mutex_lock(&T.mu);
    if (T.booked) T.booked--;
    pthread_mutex_unlock(&T.mu);
}

void vgpu_mem_track(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes)
{
    pthread_mutex_lock(&T.mu);
    if (T.booked) T.booked--;
    struct entry *e = slot_for(kind, key);
    *e = (struct entry){key, bytes, 0, d, kind, FULL, 0, 0};
    T.n++;
    pthread_mutex_unlock(&T.mu);
}

static struct entry *find(int kind, uint64_t key)
{
    if (!T.cap) return NULL;
    size_t m = T.cap - 1, i = hash(kind, key) & m;
    for (size_t steps = 0; T.e[i].state != EMPTY && steps < T.cap; steps++, i = (i + 1) & m)
        if (T.e[i].state == FULL && T.e[i].key == key && T.e[i].kind == kind) return &T.e[i];
    return NULL;
}

static void drop(struct entry *e) { e->state = TOMB; T.n--; T.tombs++; }

int vgpu_mem_take(int kind, uint64_t key, struct vgpu_dev **dout, uint64_t *bout)
{
    pthread_mutex_lock(&T.mu);
    struct entry *e = find(kind, key);
    struct vgpu_dev *d = e ? e->dev : NULL;
    uint64_t bytes = e ? e->bytes : 0;
    if (e) drop(e);
    pthread_mutex_unlock(&T.mu);
    if (!d) return 0;
    if (dout) *dout = d;
    if (bout) *bout = bytes;
    return 1;
}

/* The entry just taken left a tombstone on its own probe path, so this
 * insert always finds room. */
void vgpu_mem_retrack(int kind, uint64_t key, struct vgpu_dev *d, uint64_t bytes)
{
    pthread_mutex_lock(&T.mu);
    if (T.cap) {
        *slot_for(kind, key) = (struct entry){key, bytes, 0, d, kind, FULL, 0, 0};
        T.n++;
    }
    pthread_mutex_unlock(&T.mu);
}

void vgpu_vmm_mapped(uint64_t handle, uint64_t va, uint64_t size)
{
    pthread_mutex_lock(&T.mu);
    if (T.booked) T.booked--;
    struct entry *h = find(VGPU_KIND_VMM, handle);
    if (h) {
        h->maps++;
        struct entry *e = slot_for(VGPU_KIND_VMAP, va);
        *e = (struct entry){va, size, handle, h->dev, VGPU_KIND_VMAP, FULL, 0, 0};
        T.n++;
    }
    pthread_mutex_unlock(&T.mu);
}

uint64_t vgpu_vmm_unmapped(uint64_t va, uint64_t size, struct vgpu_dev **dout)
{
    uint64_t back = 0;
    pthread_mutex_lock(&T.mu);
    /* an unmap may cover several mappings: scan (unmaps are rare) */
    for (size_t i = 0; i < T.cap; i++) {
        struct entry *m = &T.e[i];
        if (m->state != FULL || m->kind != VGPU_KIND_VMAP || m->key < va || m->key - va >= size) continue;
        struct entry *h = find(VGPU_KIND_VMM, m->aux);
        drop(m);
        if (h && h->maps && --h->maps == 0 && h->released) {
            back += h->bytes;
            *dout = h->dev;
            drop(h);
        }
    }
    pthread_mutex_unlock(&T.mu);
    return back;
}

int vgpu_vmm_release_deferred(uint64_t handle)
{
    pthread_mutex_lock(&T.mu);
    struct entry *h = find(VGPU_KIND_VMM, handle);
    int deferred = h && h->maps > 0;
    if (deferred) h->released = 1;
    pthread_mutex_unlock(&T.mu);
    return deferred;
}

void vgpu_memacct_atfork_child(void)
{
    /* the parent's allocations are not the child's */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    T.mu = fresh;
    free(T.e);
    T.e = NULL; T.cap = T.n = T.tombs = T.booked = 0;
}
