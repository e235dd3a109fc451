#define _GNU_SOURCE
#include "region.h"
#include "log.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

_Static_assert(sizeof(struct vgpu_region_header) == 256, "header layout");
_Static_assert(sizeof(struct vgpu_region_device) == 256, "device layout");
_Static_assert(sizeof(struct vgpu_region_slot) == 192, "slot layout");

/* Process-level attachment state. The mutex serialises attaching; the spin
 * lock in the region serialises accounting between threads and processes. */
static struct {
    pthread_mutex_t mu;
    int attached;
    int shared;        /* 1: file region; 0: process-local fallback */
    int fd;
    int slot;
    pid_t pid;
    struct vgpu_region *r;
    int warned;
} P = {PTHREAD_MUTEX_INITIALIZER, 0, 0, -1, -1, 0, NULL, 0};

static int ofd_lock(int fd, short type, off_t off, int wait)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    int r;
    do {
        r = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* 1 if some other open file description holds a lock on byte off. */
static int ofd_held(int fd, off_t off)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) return 1; /* unknown: assume alive */
    return fl.l_type != F_UNLCK;
}

static void init_header(struct vgpu_region_header *h)
{
    memset(h, 0, sizeof *h);
    h->magic = VGPU_REGION_MAGIC;
    h->version = VGPU_REGION_VERSION;
    h->header_size = sizeof(struct vgpu_region_header);
    h->total_size = sizeof(struct vgpu_region);
    h->max_devices = VGPU_MAX_DEVICES;
    h->max_slots = VGPU_REGION_SLOTS;
    h->device_size = sizeof(struct vgpu_region_device);
    h->slot_size = sizeof(struct vgpu_region_slot);
    h->device_offset = offsetof(struct vgpu_region, dev);
    h->slot_offset = offsetof(struct vgpu_region, slot);
}

static int header_valid(const struct vgpu_region_header *h)
{
    struct vgpu_region_header want;
    init_header(&want);
    /* compare the layout fields, not the live busy/repairs counters */
    return memcmp(h, &want, offsetof(struct vgpu_region_header, lock)) == 0;
}

static void fallback_local(const char *why)
{
    void *m = mmap(NULL, sizeof(struct vgpu_region), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        static struct vgpu_region emergency; /* only if even mmap fails */
        m = &emergency;
        memset(m, 0, sizeof emergency);
    }
    P.r = m;
    init_header(&P.r->h);
    P.shared = 0;
    P.slot = 0;
    P.r->slot[0].in_use = 1;
    P.r->slot[0].pid = (int32_t)getpid();
    if (!P.warned++)
        LOG_ERR("shared region %s: %s; accounting is process-local with the same limits",
                vgpu_cfg.region_path, why);
}

/* Subtract a dead (or departing) slot's usage from the device totals. */
static void slot_release(struct vgpu_region *r, int i)
{
    struct vgpu_region_slot *s = &r->slot[i];
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        uint64_t u = __atomic_load_n(&s->used[d], __ATOMIC_RELAXED);
        if (!u) continue;
        uint64_t t = __atomic_load_n(&r->dev[d].mem_used, __ATOMIC_RELAXED);
        __atomic_store_n(&r->dev[d].mem_used, t > u ? t - u : 0, __ATOMIC_SEQ_CST);
        s->used[d] = 0;
    }
    s->pid = 0;
    __atomic_store_n(&s->in_use, 0, __ATOMIC_SEQ_CST);
}

/* A holder died inside the critical section: slots are the truth, the totals
 * are recomputed from the live slots. */
static void repair(struct vgpu_region *r)
{
    LOG_WARN("a process died inside the accounting critical section; repairing totals");
    r->h.repairs++;
    vgpu_region_reclaim_dead();
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        uint64_t sum = 0;
        for (int i = 0; i < VGPU_REGION_SLOTS; i++)
            if (r->slot[i].in_use) sum += r->slot[i].used[d];
        __atomic_store_n(&r->dev[d].mem_used, sum, __ATOMIC_SEQ_CST);
    }
}

int vgpu_region_reclaim_dead(void)
{
    struct vgpu_region *r = P.r;
    if (!P.shared) return 0;
    int n = 0;
    for (int i = 0; i < VGPU_REGION_SLOTS; i++) {
        if (i == P.slot || !r->slot[i].in_use) continue;
        if (ofd_held(P.fd, VGPU_LOCK_SLOT0 + i)) continue;
        LOG_INFO("reclaiming slot %d of dead process %d", i, r->slot[i].pid);
        slot_release(r, i);
        n++;
    }
    return n;
}

static int take_slot(struct vgpu_region *r)
{
    /* free slots first, then stale ones: a lock we can take proves the
     * previous owner (if any) is gone */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < VGPU_REGION_SLOTS; i++) {
            if ((pass == 0) != (r->slot[i].in_use == 0)) continue;
            if (ofd_lock(P.fd, F_WRLCK, VGPU_LOCK_SLOT0 + i, 0) < 0) continue;
            if (r->slot[i].in_use) slot_release(r, i);
            memset(r->slot[i].used, 0, sizeof r->slot[i].used);
            r->slot[i].gen++;
            r->slot[i].pid = (int32_t)getpid();
            __atomic_store_n(&r->slot[i].in_use, 1, __ATOMIC_SEQ_CST);
            return i;
        }
    return -1;
}

static uint64_t my_lock_word(struct vgpu_region *r)
{
    int slot = P.slot < 0 ? VGPU_REGION_SLOTS : P.slot; /* attach-time: slot not yet known */
    uint64_t gen = slot < VGPU_REGION_SLOTS ? r->slot[slot].gen : 0;
    return (uint64_t)(slot + 1) | gen << 32;
}

/* Is the holder named by lock word w still alive? */
static int holder_alive(struct vgpu_region *r, uint64_t w)
{
    int slot = (int)(w & 0xffffffffu) - 1;
    if (slot == P.slot) return 1; /* another thread of this process */
    /* a process taking its slot holds the attach lock meanwhile */
    if (slot < 0 || slot >= VGPU_REGION_SLOTS) return !P.shared || ofd_held(P.fd, VGPU_LOCK_CRIT);
    if (r->slot[slot].gen != (w >> 32)) return 0; /* slot reused: that holder is gone */
    return !P.shared || ofd_held(P.fd, VGPU_LOCK_SLOT0 + slot);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void spin_lock(struct vgpu_region *r)
{
    uint64_t me = my_lock_word(r);
    for (unsigned spins = 0;; spins++) {
        uint64_t w = 0;
        if (__atomic_compare_exchange_n(&r->h.lock, &w, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
        if (spins < 64) { cpu_relax(); continue; }
        /* held for a while: prove the holder alive now and then, else take over */
        if ((spins & 255) == 0 && !holder_alive(r, w) &&
            __atomic_compare_exchange_n(&r->h.lock, &w, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            repair(r);
            return;
        }
        sched_yield();
    }
}

static void spin_unlock(struct vgpu_region *r) { __atomic_store_n(&r->h.lock, 0, __ATOMIC_RELEASE); }

/* fstat through the system call: glibc 2.33 made fstat a new symbol
 * version, and libvgpu must load on older glibc (README "Loading"). The
 * kernel's struct stat is glibc's on x86_64 and aarch64. */
static int fstat_fd(int fd, struct stat *st) { return (int)syscall(SYS_fstat, fd, st); }

/* Called with P.mu held. */
static void attach_impl(void)
{
    P.pid = getpid();
    P.slot = -1;
    const char *path = vgpu_cfg.region_path;
    /* The claim directory is writable by the container: never follow a
     * symlink planted there (O_NOFOLLOW), never block opening a FIFO
     * (O_NONBLOCK), and use only a regular file. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0666);
    if (fd < 0 && errno == EACCES) /* fs.protected_regular: in the sticky claim directory an
                                      existing region of another user opens only without O_CREAT */
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        fallback_local(errno == ELOOP ? "is a symbolic link; refusing to follow it" : strerror(errno));
        return;
    }
    struct stat st;
    if (fstat_fd(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        fallback_local("is not a regular file");
        return;
    }
    (void)fchmod(fd, 0666); /* containers of one claim may run as different users */
    P.fd = fd;
    if (ofd_lock(fd, F_WRLCK, VGPU_LOCK_CRIT, 1) < 0) {
        close(fd); P.fd = -1; fallback_local("cannot lock"); return;
    }
    struct vgpu_region_header h;
    memset(&h, 0, sizeof h);
    if (fstat_fd(fd, &st) < 0) st.st_size = -1; /* again, now that we hold the attach lock */
    ssize_t got = st.st_size > 0 ? pread(fd, &h, sizeof h, 0) : 0;
    int fresh = 0;
    int valid = got == (ssize_t)sizeof h && st.st_size == (off_t)sizeof(struct vgpu_region) && header_valid(&h);
    if (!valid) {
        /* New (empty) or not ours (corrupt, truncated, other version).
         * (Re)initialise only if provably unused: nobody holds the presence
         * lock. A file in use is never truncated or rewritten. */
        if (ofd_lock(fd, F_WRLCK, VGPU_LOCK_PRESENCE, 0) == 0) {
            if (st.st_size)
                LOG_WARN("shared region %s invalid (size %lld magic %#x version %u) and unused: reinitialising",
                         path, (long long)st.st_size, h.magic, h.version);
            fresh = 1;
        } else {
            char why[160];
            snprintf(why, sizeof why, "invalid (size %lld magic %#x version %u) and in use by other processes",
                     (long long)st.st_size, h.magic, h.version);
            ofd_lock(fd, F_UNLCK, VGPU_LOCK_CRIT, 0);
            close(fd); P.fd = -1;
            fallback_local(why);
            return;
        }
    }
    if (fresh) {
        /* Only a file nobody uses gets here (empty, or invalid with the
         * presence lock free): truncating it cannot pull pages from under
         * another process's mapping. */
        if ((st.st_size > 0 && ftruncate(fd, 0) < 0) || ftruncate(fd, sizeof(struct vgpu_region)) < 0) {
            ofd_lock(fd, F_UNLCK, VGPU_LOCK_CRIT, 0);
            close(fd); P.fd = -1; fallback_local("cannot size the file"); return;
        }
    }
    void *m = mmap(NULL, sizeof(struct vgpu_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        ofd_lock(fd, F_UNLCK, VGPU_LOCK_CRIT, 0);
        close(fd); P.fd = -1; fallback_local("cannot mmap"); return;
    }
    P.r = m;
    if (fresh) {
        init_header(&h);
        memcpy(&P.r->h, &h, sizeof h); /* everything else is zero after truncation */
    }
    ofd_lock(fd, F_RDLCK, VGPU_LOCK_PRESENCE, 1); /* downgrades our write lock if we reinitialised */
    P.shared = 1;
    spin_lock(P.r);
    P.slot = take_slot(P.r);
    spin_unlock(P.r);
    ofd_lock(fd, F_UNLCK, VGPU_LOCK_CRIT, 0);
    if (P.slot < 0) {
        munmap(m, sizeof(struct vgpu_region));
        close(fd); P.fd = -1; P.r = NULL;
        fallback_local("all slots are taken by live processes");
    }
    LOG_DEBUG("attached to %s, slot %d", path, P.slot);
}

static void attach(void)
{
    attach_impl();
    __atomic_store_n(&P.attached, 1, __ATOMIC_RELEASE);
}

struct vgpu_region *vgpu_region_get(void)
{
    /* fork resets `attached` (atfork_child): no getpid() on this path */
    if (__atomic_load_n(&P.attached, __ATOMIC_ACQUIRE)) return P.r;
    pthread_mutex_lock(&P.mu);
    if (!P.attached) attach();
    pthread_mutex_unlock(&P.mu);
    return P.r;
}

int vgpu_region_is_shared(void) { vgpu_region_get(); return P.shared; }
int vgpu_region_my_slot(void) { return P.slot; }

struct vgpu_region *vgpu_region_lock(void)
{
    struct vgpu_region *r = vgpu_region_get();
    spin_lock(r);
    return r;
}

void vgpu_region_unlock(void) { spin_unlock(P.r); }

int vgpu_region_device(const char *uuid)
{
    struct vgpu_region *r = P.r;
    int freeidx = -1;
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        if (!r->dev[d].uuid[0]) { if (freeidx < 0) freeidx = d; continue; }
        if (!strncmp(r->dev[d].uuid, uuid, VGPU_UUID_LEN)) return d;
    }
    if (freeidx >= 0) snprintf(r->dev[freeidx].uuid, VGPU_UUID_LEN, "%s", uuid);
    return freeidx;
}

/* After fork the child shares the parent's open file description, hence its
 * locks: it must not keep them, and it needs a slot of its own. */
static void atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    P.mu = fresh;
    if (P.fd >= 0) close(P.fd);
    P.fd = -1;
    P.r = NULL;
    P.attached = 0;
    P.shared = 0;
    P.slot = -1;
}

void vgpu_region_init(void) { pthread_atfork(NULL, NULL, atfork_child); }

void vgpu_region_detach(void)
{
    if (!P.attached || P.pid != getpid() || !P.shared) return;
    struct vgpu_region *r = vgpu_region_lock();
    if (P.slot >= 0) slot_release(r, P.slot);
    vgpu_region_unlock();
}
