/* Test program for libvgpu's memory enforcement. Each subcommand sets up a
 * situation (the runner provides the environment) and prints ok/not ok. */
#define _GNU_SOURCE
#include "vgpu_cuda.h"
#include "vgpu_nvml.h"
#include "tutil.h"
#ifndef VGPU_REAL_GPU
#include "../fake/fake_gpu.h"
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the three ways to reach the driver ---- */
struct api {
    __typeof__(&cuMemAlloc_v2) alloc;
    __typeof__(&cuMemAllocPitch_v2) pitch;
    __typeof__(&cuMemAllocManaged) managed;
    __typeof__(&cuMemAllocAsync) async, async_ptsz;
    __typeof__(&cuMemAllocFromPoolAsync) pool, pool_ptsz;
    __typeof__(&cuMemCreate) vmm;
    __typeof__(&cuArrayCreate_v2) arr;
    __typeof__(&cuArray3DCreate_v2) arr3;
    __typeof__(&cuMipmappedArrayCreate) mip;
    __typeof__(&cuMemFree_v2) fr;
    __typeof__(&cuMemFreeAsync) fra, fra_ptsz;
    __typeof__(&cuMemRelease) rel;
    __typeof__(&cuArrayDestroy) arrd;
    __typeof__(&cuMipmappedArrayDestroy) mipd;
    __typeof__(&cuMemGetInfo_v2) info;
    __typeof__(&cuDeviceTotalMem_v2) total;
    __typeof__(&cuLaunchKernel) launch;
};

static void api_linked(struct api *a)
{
    *a = (struct api){cuMemAlloc_v2, cuMemAllocPitch_v2, cuMemAllocManaged, cuMemAllocAsync, cuMemAllocAsync_ptsz,
                      cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz, cuMemCreate, cuArrayCreate_v2,
                      cuArray3DCreate_v2, cuMipmappedArrayCreate, cuMemFree_v2, cuMemFreeAsync,
                      cuMemFreeAsync_ptsz, cuMemRelease, cuArrayDestroy, cuMipmappedArrayDestroy,
                      cuMemGetInfo_v2, cuDeviceTotalMem_v2, cuLaunchKernel};
}

static void api_dlsym(struct api *a)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
#define S(f, n) a->f = (__typeof__(a->f))dlsym(h, n)
    S(alloc, "cuMemAlloc_v2"); S(pitch, "cuMemAllocPitch_v2"); S(managed, "cuMemAllocManaged");
    S(async, "cuMemAllocAsync"); S(async_ptsz, "cuMemAllocAsync_ptsz"); S(pool, "cuMemAllocFromPoolAsync");
    S(pool_ptsz, "cuMemAllocFromPoolAsync_ptsz"); S(vmm, "cuMemCreate"); S(arr, "cuArrayCreate_v2");
    S(arr3, "cuArray3DCreate_v2"); S(mip, "cuMipmappedArrayCreate"); S(fr, "cuMemFree_v2");
    S(fra, "cuMemFreeAsync"); S(fra_ptsz, "cuMemFreeAsync_ptsz"); S(rel, "cuMemRelease");
    S(arrd, "cuArrayDestroy"); S(mipd, "cuMipmappedArrayDestroy"); S(info, "cuMemGetInfo_v2");
    S(total, "cuDeviceTotalMem_v2"); S(launch, "cuLaunchKernel");
#undef S
}

/* How a CUDA 12/13 runtime does it: base names, its version, ptds flag. */
static void api_procaddr(struct api *a)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    __typeof__(&cuGetProcAddress_v2) gpa = (__typeof__(gpa))dlsym(h, "cuGetProcAddress_v2");
    CUdriverProcAddressQueryResult st;
#define P(f, n, fl) gpa(n, (void **)&a->f, 13000, fl, &st)
    P(alloc, "cuMemAlloc", 0); P(pitch, "cuMemAllocPitch", 0); P(managed, "cuMemAllocManaged", 0);
    P(async, "cuMemAllocAsync", 0); P(async_ptsz, "cuMemAllocAsync", 2); P(pool, "cuMemAllocFromPoolAsync", 0);
    P(pool_ptsz, "cuMemAllocFromPoolAsync", 2); P(vmm, "cuMemCreate", 0); P(arr, "cuArrayCreate", 0);
    P(arr3, "cuArray3DCreate", 0); P(mip, "cuMipmappedArrayCreate", 0); P(fr, "cuMemFree", 0);
    P(fra, "cuMemFreeAsync", 0); P(fra_ptsz, "cuMemFreeAsync", 2); P(rel, "cuMemRelease", 0);
    P(arrd, "cuArrayDestroy", 0); P(mipd, "cuMipmappedArrayDestroy", 0); P(info, "cuMemGetInfo", 0);
    P(total, "cuDeviceTotalMem", 0); P(launch, "cuLaunchKernel", 0);
#undef P
}

static int get_api(const char *path, struct api *a)
{
    if (!strcmp(path, "linked")) api_linked(a);
    else if (!strcmp(path, "dlsym")) api_dlsym(a);
    else if (!strcmp(path, "procaddr")) api_procaddr(a);
    else return -1;
    return 0;
}

static CUcontext ctx_on(int dev)
{
    CUcontext c;
    CUdevice d;
    cuDeviceGet(&d, dev);
    cuCtxCreate_v2(&c, 0, d);
    return c;
}

/* What the quota leaves after the context: the whole quota on the fake
 * driver (contexts take no memory unless FAKE_CTX_MEM says so), the quota
 * less the context's charge on a real GPU. */
static uint64_t budget(void)
{
    size_t f = 0, t = 0;
    cuMemGetInfo_v2(&f, &t);
    return f;
}

static CUmemoryPool default_pool(int dev)
{
    CUmemoryPool p = NULL;
    cuDeviceGetDefaultMemPool(&p, dev);
    return p;
}

/* Allocate one 256 MiB object through API kind k. */
static const char *kinds[] = {"cuMemAlloc_v2", "cuMemAllocPitch_v2", "cuMemAllocManaged", "cuMemAllocAsync",
                              "cuMemAllocAsync_ptsz", "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz",
                              "cuMemCreate", "cuArrayCreate_v2", "cuArray3DCreate_v2", "cuMipmappedArrayCreate"};
#define NKINDS 11
static CUresult alloc_k(struct api *a, int k, int dev, uint64_t *obj)
{
    CUdeviceptr p = 0;
    size_t pitch;
    CUresult r = CUDA_ERROR_UNKNOWN;
    CUDA_ARRAY_DESCRIPTOR d2 = {16384, 4096, CU_AD_FORMAT_FLOAT, 1};
    CUDA_ARRAY3D_DESCRIPTOR d3 = {1024, 1024, 64, CU_AD_FORMAT_FLOAT, 1, 0};
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1; prop.location.type = 1; prop.location.id = dev;
    switch (k) {
    case 0: r = a->alloc(&p, 256 * MiB); break;
    case 1: r = a->pitch(&p, &pitch, 8192, 32768, 4); break;
    case 2: r = a->managed(&p, 256 * MiB, CU_MEM_ATTACH_GLOBAL); break;
    case 3: r = a->async(&p, 256 * MiB, NULL); break;
    case 4: r = a->async_ptsz(&p, 256 * MiB, NULL); break;
    case 5: r = a->pool(&p, 256 * MiB, default_pool(dev), NULL); break;
    case 6: r = a->pool_ptsz(&p, 256 * MiB, default_pool(dev), NULL); break;
    case 7: { CUmemGenericAllocationHandle h = 0; r = a->vmm(&h, 256 * MiB, &prop, 0); p = h; break; }
    case 8: { CUarray x = 0; r = a->arr(&x, &d2); p = (uintptr_t)x; break; }
    case 9: { CUarray x = 0; r = a->arr3(&x, &d3); p = (uintptr_t)x; break; }
    case 10: { CUmipmappedArray x = 0; r = a->mip(&x, &d3, 1); p = (uintptr_t)x; break; }
    }
    *obj = p;
    return r;
}

static CUresult free_k(struct api *a, int k, uint64_t obj)
{
    switch (k) {
    case 3: return a->fra(obj, NULL);
    case 4: return a->fra_ptsz(obj, NULL);
    case 5: case 6: return a->fra(obj, NULL);
    case 7: return a->rel(obj);
    case 8: case 9: return a->arrd((CUarray)(uintptr_t)obj);
    case 10: return a->mipd((CUmipmappedArray)(uintptr_t)obj);
    default: return a->fr(obj);
    }
}

/* Fill the quota with 256 MiB objects; expect exactly `expect` to fit. */
static int fill(struct api *a, int k, int dev, int expect, uint64_t *objs, CUresult *last)
{
    int n = 0;
    for (; n < 64; n++) {
        *last = alloc_k(a, k, dev, &objs[n]);
        if (*last != CUDA_SUCCESS) break;
    }
    (void)expect;
    return n;
}

static int cmd_apis(const char *path, int expect)
{
    struct api a;
    if (get_api(path, &a)) return 2;
    cuInit(0);
    ctx_on(0);
    uint64_t left = budget() / (256 * MiB);
    if ((uint64_t)expect > left) expect = (int)left; /* a real GPU's context is charged too */
    for (int k = 0; k < NKINDS; k++) {
        uint64_t objs[64];
        CUresult last;
        int n = fill(&a, k, 0, expect, objs, &last);
        int ok1 = n == expect && last == CUDA_ERROR_OUT_OF_MEMORY;
        for (int i = 0; i < n; i++) free_k(&a, k, objs[i]);
        int n2 = fill(&a, k, 0, expect, objs, &last);
        for (int i = 0; i < n2; i++) free_k(&a, k, objs[i]);
        t_check(ok1 && n2 == expect, "%s via %s: %d x 256MiB fit (want %d), then OOM (%d); after frees %d fit again",
                kinds[k], path, n, expect, last, n2);
    }
    return 0;
}

static int nvml_mem(unsigned idx, unsigned long long *total, unsigned long long *free_b, int v2)
{
    nvmlDevice_t h;
    nvmlInit_v2();
    if (nvmlDeviceGetHandleByIndex_v2(idx, &h)) return -1;
    if (v2) {
        nvmlMemory_v2_t m = {.version = nvmlMemory_v2};
        if (nvmlDeviceGetMemoryInfo_v2(h, &m)) return -1;
        *total = m.total; *free_b = m.free;
    } else {
        nvmlMemory_t m;
        if (nvmlDeviceGetMemoryInfo(h, &m)) return -1;
        *total = m.total; *free_b = m.free;
    }
    return 0;
}

/* meminfo <path> <quota MiB> */
static int cmd_meminfo(const char *path, uint64_t quota)
{
    struct api a;
    if (get_api(path, &a)) return 2;
    cuInit(0);
    ctx_on(0);
    uint64_t base = budget(); /* the quota, less the context's charge on a real GPU */
    CUdeviceptr p;
    a.alloc(&p, 256 * MiB);
    size_t f, t;
    a.info(&f, &t);
    t_check(t == quota && f == base - 256 * MiB, "cuMemGetInfo via %s: total %zu MiB free %zu MiB (quota %llu MiB, 256 MiB used)",
            path, t >> 20, f >> 20, (unsigned long long)(quota >> 20));
    size_t tot;
    a.total(&tot, 0);
    t_check(tot == quota, "cuDeviceTotalMem via %s: %zu MiB", path, tot >> 20);
    unsigned long long nt = 0, nf = 0;
    for (int v2 = 0; v2 < 2; v2++) {
        int r = nvml_mem(0, &nt, &nf, v2);
        t_check(!r && nt == quota && nf == base - 256 * MiB, "nvmlDeviceGetMemoryInfo%s: total %llu MiB free %llu MiB",
                v2 ? "_v2" : "", nt >> 20, nf >> 20);
    }
    /* NVML through dlopen+dlsym, as nvidia-smi does */
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    __typeof__(&nvmlDeviceGetMemoryInfo) gm = (__typeof__(gm))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvmlDevice_t d;
    nvmlDeviceGetHandleByIndex_v2(0, &d);
    nvmlMemory_t m;
    gm(d, &m);
    t_check(m.total == quota && m.free == base - 256 * MiB, "nvmlDeviceGetMemoryInfo via dlsym: total %llu MiB", m.total >> 20);
    a.fr(p);
    a.info(&f, &t);
    t_check(f == base, "free after cuMemFree: %zu MiB", f >> 20);
    return 0;
}

/* Physically free is the bound when other claims filled the GPU. */
static int cmd_physfree(void)
{
    cuInit(0);
    ctx_on(0);
    size_t f, t;
    cuMemGetInfo_v2(&f, &t);
    t_check(f == 512 * MiB && t == 1 * GiB, "quota 1 GiB, 512 MiB physically free: total %zu MiB free %zu MiB", t >> 20, f >> 20);
    return 0;
}

/* twogpus: ordinal -> expected 256 MiB allocations, given as args */
static int cmd_two(int argc, char **argv)
{
    cuInit(0);
    int n = 0;
    cuDeviceGetCount(&n);
    /* one expectation per visible GPU: a GPU the driver does not show (or
     * one the test forgot) is a failure, not a silently skipped check */
    t_check(n == argc - 2, "the driver shows %d GPUs, the test expects %d", n, argc - 2);
    for (int dev = 0; dev < n && dev + 2 < argc; dev++) {
        int expect = atoi(argv[dev + 2]);
        ctx_on(dev);
        uint64_t objs[64];
        CUresult last;
        struct api a;
        api_linked(&a);
        int got = fill(&a, 0, dev, expect, objs, &last);
        size_t f, t;
        cuMemGetInfo_v2(&f, &t);
        t_check(got == expect, "device %d: %d x 256 MiB fit (want %d), cuMemGetInfo total %zu MiB free %zu MiB",
                dev, got, expect, t >> 20, f >> 20);
    }
    return 0;
}

/* nvml <index> <expected total MiB> */
static int cmd_nvml(unsigned idx, unsigned long long want)
{
    unsigned long long t = 0, f = 0;
    int r = nvml_mem(idx, &t, &f, 0);
    t_check(!r && t == want * MiB, "NVML index %u reports total %llu MiB (want %llu)", idx, t >> 20, want);
    return 0;
}

/* ---- concurrency: many processes and threads, never past the quota ---- */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    CUcontext c;
    cuDevicePrimaryCtxRetain(&c, 0);
    cuCtxSetCurrent(c);
    CUdeviceptr held[16];
    int n = 0;
    uint64_t end = now_ns() + 1500000000ull;
    long ok = 0, oom = 0;
    while (now_ns() < end) {
        if (n < 16 && (rand_r(&seed) % 3)) {
            size_t sz = (1 + rand_r(&seed) % 64) * MiB;
            CUresult r = cuMemAlloc_v2(&held[n], sz);
            if (r == CUDA_SUCCESS) { n++; ok++; }
            else if (r == CUDA_ERROR_OUT_OF_MEMORY) oom++;
        } else if (n) {
            cuMemFree_v2(held[--n]);
        }
    }
    while (n) cuMemFree_v2(held[--n]);
    return (void *)(ok * 1000000 + oom);
}

static int cmd_concurrent(int procs, int threads, uint64_t quota)
{
#ifdef VGPU_REAL_GPU
    struct { struct { uint64_t peak_used, phys_used; } dev[1]; } fake = {{{0, 0}}}, *st = &fake; /* no physical trace */
#else
    struct fg_state *st = fg_state();
#endif
    pid_t pids[64];
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            cuInit(0);
            pthread_t th[16];
            for (int t = 0; t < threads; t++) pthread_create(&th[t], NULL, worker, (void *)(uintptr_t)(p * 100 + t + 1));
            long ok = 0, oom = 0;
            for (int t = 0; t < threads; t++) {
                void *r;
                pthread_join(th[t], &r);
                ok += (long)r / 1000000;
                oom += (long)r % 1000000;
            }
            printf("# process %d: %ld allocations, %ld refused\n", p, ok, oom);
            fflush(stdout);
            _exit(ok > 0 && oom > 0 ? 0 : 1);
        }
    }
    int good = 1;
    for (int p = 0; p < procs; p++) {
        int s;
        waitpid(pids[p], &s, 0);
        good &= WIFEXITED(s) && WEXITSTATUS(s) == 0;
    }
    uint64_t peak = st->dev[0].peak_used, used = st->dev[0].phys_used;
    t_check(good, "%d processes x %d threads all allocated and were refused at the quota", procs, threads);
    t_check(peak <= quota, "physical peak %llu MiB <= quota %llu MiB", (unsigned long long)(peak >> 20),
            (unsigned long long)(quota >> 20));
    t_check(peak > quota / 2, "quota was actually exercised (peak %llu MiB)", (unsigned long long)(peak >> 20));
    t_check(used == 0, "everything freed at the end (%llu bytes)", (unsigned long long)used);
    /* a new process sees the full quota again (less its own context on a
     * real GPU: at most 1 GiB) */
    cuInit(0);
    ctx_on(0);
    size_t f, t;
    cuMemGetInfo_v2(&f, &t);
#ifdef VGPU_REAL_GPU
    t_check(f <= quota && f + GiB >= quota, "after all exited, free = quota less this process's context (%zu MiB)", f >> 20);
#else
    t_check(f == quota, "after all exited, free = quota (%zu MiB)", f >> 20);
#endif
    return 0;
}

/* ---- robustness: SIGKILL while holding memory or the lock ---- */
static int wait_file(const char *p, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (access(p, F_OK) == 0) return 0;
        usleep(1000);
    }
    return -1;
}

static int cmd_kill(const char *mode, uint64_t quota, const char *pausefile)
{
    unlink(pausefile);
    pid_t c = fork();
    if (c == 0) {
        if (!strcmp(mode, "inlock")) {
            setenv("VGPU_TEST_PAUSE_IN_LOCK_MS", "20000", 1);
            setenv("VGPU_TEST_PAUSE_FILE", pausefile, 1);
        }
        /* exec so that libvgpu reads the test hook from a fresh environment */
        execl("/proc/self/exe", "vt", "kill-child", mode, pausefile, (char *)NULL);
        _exit(127);
    }
    int r = wait_file(pausefile, 10000);
    t_check(r == 0, "child reached the %s point", mode);
    if (!strcmp(mode, "holding")) usleep(20000);
    kill(c, SIGKILL);
    int s;
    waitpid(c, &s, 0);
    alarm(10); /* a stranded lock would hang here */
    cuInit(0);
    ctx_on(0);
    uint64_t base = budget(); /* the quota, less this process's context on a real GPU */
    uint64_t objs[64];
    CUresult last;
    struct api a;
    api_linked(&a);
    int n = fill(&a, 0, 0, 0, objs, &last);
    t_check((uint64_t)n == base / (256 * MiB) && base > quota / 2, "after SIGKILL %s: %d x 256 MiB fit again (quota %llu MiB, %llu MiB after the context)",
            mode, n, (unsigned long long)(quota >> 20), (unsigned long long)(base >> 20));
    size_t f, t;
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    cuMemGetInfo_v2(&f, &t);
    t_check(f == base && t == quota, "free memory is sane after the kill: %zu MiB of %zu MiB", f >> 20, t >> 20);
    return 0;
}

static int cmd_kill_child(const char *mode, const char *pausefile)
{
    cuInit(0);
    ctx_on(0);
    CUdeviceptr p;
    if (!strcmp(mode, "holding")) {
        cuMemAlloc_v2(&p, 512 * MiB);
        cuMemAlloc_v2(&p, 256 * MiB);
        int fd = open(pausefile, O_CREAT | O_WRONLY, 0644);
        close(fd);
        pause();
    }
    cuMemAlloc_v2(&p, 256 * MiB); /* test hook pauses inside */
    cuMemAlloc_v2(&p, 256 * MiB);
    pause();
    return 0;
}

/* ---- fork: children take their own slot and see the parent's usage ---- */
static int cmd_fork(uint64_t quota)
{
    cuInit(0);
    ctx_on(0);
    CUdeviceptr p;
    cuMemAlloc_v2(&p, 512 * MiB);
    pid_t c = fork();
    if (c == 0) {
        ctx_on(0);
        uint64_t objs[64];
        CUresult last;
        struct api a;
        api_linked(&a);
        int n = fill(&a, 0, 0, 0, objs, &last);
        _exit(n);
    }
    int s;
    waitpid(c, &s, 0);
    int n = WIFEXITED(s) ? WEXITSTATUS(s) : -1;
    t_check((uint64_t)n * 256 * MiB == quota - 512 * MiB, "forked child fits %d x 256 MiB beside the parent's 512 MiB", n);
    size_t f, t;
    cuMemGetInfo_v2(&f, &t);
    t_check(f == quota - 512 * MiB, "child's usage returned at its exit: parent sees %zu MiB free", f >> 20);
    return 0;
}

/* hold <MiB>: allocate and sleep (for the region tests) */
static int cmd_hold(int mib, const char *readyfile)
{
    cuInit(0);
    ctx_on(0);
    CUdeviceptr p;
    CUresult r = cuMemAlloc_v2(&p, (size_t)mib * MiB);
    int fd = open(readyfile, O_CREAT | O_WRONLY, 0644);
    close(fd);
    if (r) return 1;
    sleep(30);
    return 0;
}

/* fillcount: print how many 256 MiB cuMemAlloc_v2 fit */
static int cmd_fillcount(void)
{
    cuInit(0);
    ctx_on(0);
    uint64_t objs[64];
    CUresult last;
    struct api a;
    api_linked(&a);
    int n = fill(&a, 0, 0, 0, objs, &last);
    size_t f, t;
    cuMemGetInfo_v2(&f, &t);
    printf("fit=%d last=%d total=%zu\n", n, last, t >> 20);
    return 0;
}


/* ---- driver memory outside allocations, stream-ordered frees, pools ---- */
static uint64_t phys_peak(int dev)
{
#ifdef VGPU_REAL_GPU
    (void)dev;
    return 0;
#else
    return fg_state()->dev[dev].peak_used;
#endif
}

static CUcontext primary_on(int dev)
{
    CUcontext c = NULL;
    CUresult r = cuDevicePrimaryCtxRetain(&c, dev);
    if (r == CUDA_SUCCESS) cuCtxSetCurrent(c);
    return r == CUDA_SUCCESS ? c : NULL;
}

static size_t free_mib(void)
{
    size_t f = 0, t = 0;
    cuMemGetInfo_v2(&f, &t);
    return f >> 20;
}

/* ctxfill <resultfile>: as a CUDA runtime does, retain the primary context,
 * then hold as many 64 MiB allocations as fit; write the result and wait. */
static int cmd_ctxfill(const char *resultfile)
{
    cuInit(0);
    CUcontext c = primary_on(0);
    size_t f = 0, t = 0;
    cuMemGetInfo_v2(&f, &t);
    int n = 0;
    CUdeviceptr p;
    CUresult last = CUDA_SUCCESS;
    while (c && n < 1024 && (last = cuMemAlloc_v2(&p, 64 * MiB)) == CUDA_SUCCESS) n++;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", resultfile);
    FILE *out = fopen(tmp, "w");
    if (!out) return 1;
    fprintf(out, "ctx=%d fit=%d last=%d total=%zu free=%zu\n", c != NULL, n, last, t >> 20, f >> 20);
    fclose(out);
    rename(tmp, resultfile);
    pause();
    return 0;
}

/* claims <n> <quota MiB> <ctx MiB> <dir>: n claims, one process each (own
 * region), started one after another, each filling its quota. Their quotas
 * plus nothing else may fill the GPU: what the driver takes for contexts
 * must be inside each quota, or the last claim's context finds no memory.
 * ctx 0: the context's size is whatever the driver takes (a real GPU). */
static int cmd_claims(int n, uint64_t quota, uint64_t ctx, const char *dir)
{
    pid_t pids[16];
    char res[16][512];
    int good = 1;
    for (int i = 0; i < n && i < 16; i++) {
        snprintf(res[i], sizeof res[i], "%s/claim%d.result", dir, i);
        unlink(res[i]);
        pids[i] = fork();
        if (pids[i] == 0) {
            char region[512];
            snprintf(region, sizeof region, "%s/claim%d.region", dir, i);
            setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", region, 1);
            execl("/proc/self/exe", "vt", "ctxfill", res[i], (char *)NULL);
            _exit(127);
        }
        if (wait_file(res[i], 10000)) { t_check(0, "claim %d reported", i); good = 0; break; }
    }
    for (int i = 0; i < n; i++) {
        char line[256] = "";
        FILE *f = fopen(res[i], "r");
        if (f) { if (!fgets(line, sizeof line, f)) line[0] = 0; fclose(f); }
        line[strcspn(line, "\n")] = 0;
        int c = 0, fit = -1, last = -1;
        unsigned long long total = 0, free_after = 0;
        sscanf(line, "ctx=%d fit=%d last=%d total=%llu free=%llu", &c, &fit, &last, &total, &free_after);
        /* ctx 0: the context's size is the driver's (real GPU); it must have
         * been charged, and the rest of the quota must be usable */
        uint64_t want = ctx ? (quota - ctx) / (64 * MiB) : (free_after << 20) / (64 * MiB);
        int charged = ctx ? free_after == (quota - ctx) >> 20 : free_after < quota >> 20;
        t_check(c == 1 && charged && (uint64_t)fit == want && last == CUDA_ERROR_OUT_OF_MEMORY,
                "claim %d of %d (quota %llu MiB): %s (want ctx=1, the context charged, fit=%llu)", i, n,
                (unsigned long long)(quota >> 20), line, (unsigned long long)want);
    }
    for (int i = 0; i < n; i++) { kill(pids[i], SIGKILL); waitpid(pids[i], NULL, 0); }
    (void)good;
    return 0;
}

/* module <quota MiB> <module MiB> [how]: a loaded module's (or library's)
 * memory is charged while it is loaded. how: data (cuModuleLoadData),
 * dataex, fatbin, library (cuLibraryLoadData), libfile. */
static int cmd_module(uint64_t quota, uint64_t mod, const char *how)
{
    cuInit(0);
    primary_on(0);
    size_t f0 = free_mib();
    CUmodule m = NULL;
    CUlibrary l = NULL;
    CUresult r;
    if (!strcmp(how, "dataex")) r = cuModuleLoadDataEx(&m, "module image", 0, NULL, NULL);
    else if (!strcmp(how, "fatbin")) r = cuModuleLoadFatBinary(&m, "fat binary");
    else if (!strcmp(how, "library")) r = cuLibraryLoadData(&l, "library image", NULL, NULL, 0, NULL, NULL, 0);
    else if (!strcmp(how, "libfile")) r = cuLibraryLoadFromFile(&l, "/nonexistent.cubin", NULL, NULL, 0, NULL, NULL, 0);
    else r = cuModuleLoadData(&m, "module image");
    size_t f1 = free_mib();
    int n = 0;
    CUdeviceptr objs[64];
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(r == CUDA_SUCCESS && f0 - f1 == mod >> 20 && (uint64_t)n == (quota - mod) / (64 * MiB),
            "%s load: free %zu -> %zu MiB, then %d x 64 MiB fit (want %llu)", how, f0, f1, n,
            (unsigned long long)((quota - mod) / (64 * MiB)));
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    if (l) cuLibraryUnload(l);
    else cuModuleUnload(m);
    t_check(free_mib() == f0, "%s unloaded: its charge returned (free %zu MiB)", how, free_mib());
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* ctxrace <quota MiB> <context MiB> <other MiB> <dir>: another claim's
 * process allocates while this one's primary context is being created (a
 * real context takes tens to hundreds of ms: FAKE_CTX_CREATE_MS). The drop
 * in the device's free memory across the creation then over-states the
 * context; what the driver really holds for this process (NVML) must set
 * the charge right, so the whole quota less the context is usable. */
static int cmd_ctxrace(uint64_t quota, uint64_t ctx, uint64_t other, const char *dir)
{
    char ready[512], region[512];
    snprintf(ready, sizeof ready, "%s/ctxrace.ready", dir);
    snprintf(region, sizeof region, "%s/ctxrace.other", dir);
    unlink(ready);
    cuInit(0);
    pid_t pid = fork();
    if (pid == 0) {
        char mib[32];
        snprintf(mib, sizeof mib, "%llu", (unsigned long long)(other >> 20));
        setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", region, 1);
        unsetenv("FAKE_CTX_CREATE_MS");
        usleep(100 * 1000); /* well inside the parent's context creation */
        execl("/proc/self/exe", "vt", "hold", mib, ready, (char *)NULL);
        _exit(127);
    }
    CUcontext c = primary_on(0); /* takes FAKE_CTX_CREATE_MS; the other process allocates meanwhile */
    int other_ok = wait_file(ready, 10000) == 0;
    int n = 0;
    CUdeviceptr objs[64];
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(c && other_ok && (uint64_t)n == (quota - ctx) / (64 * MiB),
            "another process allocated %llu MiB during the context's creation: %d x 64 MiB fit (want %llu: the "
            "quota less the %llu MiB context)", (unsigned long long)(other >> 20), n,
            (unsigned long long)((quota - ctx) / (64 * MiB)), (unsigned long long)(ctx >> 20));
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    cuDevicePrimaryCtxRelease_v2(0);
    c = primary_on(0);
    n = 0;
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(c && (uint64_t)n == (quota - ctx) / (64 * MiB),
            "the context released and retained again: %d x 64 MiB fit (want %llu)", n,
            (unsigned long long)((quota - ctx) / (64 * MiB)));
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}

/* lazyload <quota MiB> <kernel MiB> <kernels>: under lazy loading
 * (CUDA_MODULE_LOADING=LAZY, CUDA 12.2+'s default) a module load takes
 * almost nothing and each kernel takes its memory when it is first fetched
 * (cuModuleGetFunction) or launched. No hook sees that memory being taken:
 * the claim must still be charged it, so the rest of the quota, not all
 * of it, is what allocations get. */
static int cmd_lazyload(uint64_t quota, uint64_t kernel, int kernels)
{
    cuInit(0);
    primary_on(0);
    CUmodule m = NULL;
    CUresult r = cuModuleLoadData(&m, "module image");
    size_t f0 = free_mib();
    int got = 0;
    for (int i = 0; i < kernels; i++) {
        char name[32];
        CUfunction f;
        snprintf(name, sizeof name, "kernel_%d", i);
        got += cuModuleGetFunction(&f, m, name) == CUDA_SUCCESS;
        got += cuModuleGetFunction(&f, m, name) == CUDA_SUCCESS; /* fetched again: loaded once */
    }
    uint64_t lazy = kernel * (uint64_t)kernels;
    int n = 0;
    CUdeviceptr objs[64];
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(r == CUDA_SUCCESS && got == 2 * kernels && (uint64_t)n == (quota - lazy) / (64 * MiB),
            "%d kernels loaded lazily (%llu MiB; free %zu MiB before them): %d x 64 MiB fit (want %llu)", kernels,
            (unsigned long long)(lazy >> 20), f0, n, (unsigned long long)((quota - lazy) / (64 * MiB)));
    t_check(free_mib() == 0 || free_mib() < 64, "the quota reads as used up (free %zu MiB)", free_mib());
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    cuModuleUnload(m);
    n = 0;
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check((uint64_t)n == quota / (64 * MiB), "module unloaded: its kernels' charge returned (%d x 64 MiB fit)", n);
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* graphmem <quota MiB> <graph MiB>: a graph's memory nodes (a
 * cuMemAllocAsync/cuMemFreeAsync pair captured into it) take no memory at
 * capture; the driver reserves it for the graph at its first launch and
 * keeps it until cuDeviceGraphMemTrim. No allocation hook runs then: the
 * claim must still be charged it while it is reserved. */
static int cmd_graphmem(uint64_t quota, uint64_t gmem) /* also run on a real GPU (gpu-tests/run.sh) */
{
    cuInit(0);
    primary_on(0);
    CUstream s;
    cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    size_t f0 = free_mib();
    CUresult rb = cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL);
    CUdeviceptr p = 0;
    CUresult ra = cuMemAllocAsync(&p, gmem, s);
    CUresult rf = cuMemFreeAsync(p, s);
    CUgraph g = NULL;
    CUresult re = cuStreamEndCapture(s, &g);
    size_t f1 = free_mib();
    CUgraphExec e = NULL;
    CUresult ri = cuGraphInstantiateWithFlags(&e, g, 0);
    CUresult rl = cuGraphLaunch(e, s);
    cuStreamSynchronize(s);
    size_t f2 = free_mib();
    t_check(rb == CUDA_SUCCESS && ra == CUDA_SUCCESS && rf == CUDA_SUCCESS && re == CUDA_SUCCESS &&
                ri == CUDA_SUCCESS && rl == CUDA_SUCCESS && f1 == f0,
            "captured, instantiated and launched a graph with %llu MiB of memory nodes (free %zu MiB, %zu after the "
            "capture)", (unsigned long long)(gmem >> 20), f0, f1);
    /* the driver may reserve a little more than the nodes ask (pool granularity) */
    t_check(f0 - f2 >= gmem >> 20 && f0 - f2 <= (gmem >> 20) + 64, "after its launch the claim's free memory fell by "
            "%zu MiB (want %llu-%llu)", f0 - f2, (unsigned long long)(gmem >> 20), (unsigned long long)(gmem >> 20) + 64);
    int n = 0;
    CUdeviceptr objs[1024];
    while (n < 1024 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
#ifdef VGPU_REAL_GPU
    size_t slack = 1; /* the real driver's own buffers may grow meanwhile */
#else
    size_t slack = 0;
#endif
    t_check((size_t)n <= f2 / 64 && (size_t)n + slack >= f2 / 64, "and %d x 64 MiB fit (want %zu)", n, f2 / 64);
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    CUresult rt = cuDeviceGraphMemTrim(0);
    n = 0;
    while (n < 1024 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(rt == CUDA_SUCCESS && (size_t)n <= f0 / 64 && (size_t)n + slack >= f0 / 64,
            "after cuDeviceGraphMemTrim: its charge returned (%d x 64 MiB fit, want %zu)", n, f0 / 64);
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    cuGraphExecDestroy(e);
    cuGraphDestroy(g);
    return 0;
}

/* ctxcreate <quota MiB> <context MiB> [version]: cuCtxCreate'd contexts are
 * charged while they live, and churn leaks nothing. version: v2 (default),
 * v3, v4, or procaddr (cuCtxCreate from cuGetProcAddress as a CUDA 12.5+
 * runtime asks for it: the driver hands out _v4). */
static CUresult (*ctx_create)(CUcontext *c, unsigned flags, CUdevice d);
static CUresult ctx_create_v3(CUcontext *c, unsigned flags, CUdevice d) { return cuCtxCreate_v3(c, NULL, 0, flags, d); }
static CUresult ctx_create_v4(CUcontext *c, unsigned flags, CUdevice d) { return cuCtxCreate_v4(c, NULL, flags, d); }
static __typeof__(&cuCtxCreate_v4) procaddr_v4;
static CUresult ctx_create_procaddr(CUcontext *c, unsigned flags, CUdevice d) { return procaddr_v4(c, NULL, flags, d); }
static int cmd_ctxcreate(uint64_t quota, uint64_t ctx, const char *version)
{
    cuInit(0);
    ctx_create = cuCtxCreate_v2;
    if (!strcmp(version, "v3")) ctx_create = ctx_create_v3;
    if (!strcmp(version, "v4")) ctx_create = ctx_create_v4;
    if (!strcmp(version, "procaddr")) {
        CUdriverProcAddressQueryResult st;
        if (cuGetProcAddress_v2("cuCtxCreate", (void **)&procaddr_v4, 12080, 0, &st) != CUDA_SUCCESS || !procaddr_v4) {
            t_check(0, "cuGetProcAddress(cuCtxCreate, 12080)");
            return 0;
        }
        ctx_create = ctx_create_procaddr;
    }
    CUcontext a, b;
    CUresult ra = ctx_create(&a, 0, 0);
    size_t f1 = free_mib();
    CUresult rb = ctx_create(&b, 0, 0);
    size_t f2 = free_mib();
    t_check(ra == CUDA_SUCCESS && rb == CUDA_SUCCESS && f1 == (quota - ctx) >> 20 && f2 == (quota - 2 * ctx) >> 20,
            "two created contexts: free %zu MiB, then %zu MiB", f1, f2);
    cuCtxDestroy_v2(b);
    cuCtxSetCurrent(a);
    t_check(free_mib() == (quota - ctx) >> 20, "one destroyed: free %zu MiB", free_mib());
    for (int i = 0; i < 50; i++) {
        CUcontext c;
        if (ctx_create(&c, 0, 0) == CUDA_SUCCESS) cuCtxDestroy_v2(c);
    }
    cuCtxSetCurrent(a);
    size_t f3 = free_mib();
    int n = 0;
    CUdeviceptr objs[64];
    while (n < 64 && cuMemAlloc_v2(&objs[n], 64 * MiB) == CUDA_SUCCESS) n++;
    t_check(f3 == (quota - ctx) >> 20 && (uint64_t)n == (quota - ctx) / (64 * MiB),
            "after 50 create/destroy cycles: free %zu MiB, %d x 64 MiB fit", f3, n);
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* asyncfree <quota MiB>: a stream-ordered free gives its quota back only
 * when the stream has run it and the pool has released the memory. */
static int cmd_asyncfree(uint64_t quota)
{
    cuInit(0);
    primary_on(0);
    CUstream s;
    cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    CUfunction k;
    cuModuleGetFunction(&k, NULL, "sleep_ns");
    uint64_t ns = 1000000000ull; /* long enough that the checks below run while it does, even on a loaded machine */
    void *params[] = {&ns};
    CUdeviceptr p, q;
    CUresult r1 = cuMemAllocAsync(&p, 768 * MiB, s);
    cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    cuMemFreeAsync(p, s); /* runs after the kernel */
    size_t f1 = free_mib();
    CUresult r2 = cuMemAlloc_v2(&q, 512 * MiB);
    t_check(r1 == CUDA_SUCCESS && r2 == CUDA_ERROR_OUT_OF_MEMORY && f1 <= (quota >> 20) - 768,
            "free queued behind a kernel: quota not back yet (512 MiB alloc: %d, free %zu MiB)", r2, f1);
    if (r2 == CUDA_SUCCESS) cuMemFree_v2(q);
    cuStreamSynchronize(s);
    size_t f2 = free_mib();
    CUresult r3 = cuMemAlloc_v2(&q, 512 * MiB);
    t_check(f2 == quota >> 20 && r3 == CUDA_SUCCESS,
            "after the stream ran the free and the pool released it: free %zu MiB, 512 MiB alloc %d", f2, r3);
    if (r3 == CUDA_SUCCESS) cuMemFree_v2(q);
    t_check(phys_peak(0) <= quota, "device memory used by the claim never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* asyncfreeplain <quota MiB>: cuMemFreeAsync of a cuMemAlloc'd pointer (which
 * CUDA allows) frees it when the stream reaches the free, not when it is
 * queued: its quota comes back then, never earlier. */
static int cmd_asyncfreeplain(uint64_t quota)
{
    cuInit(0);
    primary_on(0);
    CUstream s;
    cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    CUfunction k;
    cuModuleGetFunction(&k, NULL, "sleep_ns");
    uint64_t ns = 1000000000ull; /* the checks below run while it does */
    void *params[] = {&ns};
    CUdeviceptr p, q;
    CUresult r1 = cuMemAlloc_v2(&p, 768 * MiB);
    cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, s, params, NULL);
    CUresult rf = cuMemFreeAsync(p, s); /* runs after the kernel */
    size_t f1 = free_mib();
    CUresult r2 = cuMemAlloc_v2(&q, 512 * MiB);
    t_check(r1 == CUDA_SUCCESS && rf == CUDA_SUCCESS && r2 == CUDA_ERROR_OUT_OF_MEMORY && f1 <= (quota >> 20) - 768,
            "free of a cuMemAlloc'd pointer queued behind a kernel: quota not back yet (alloc %d, free %d; then 512 MiB alloc: %d, free %zu MiB)",
            r1, rf, r2, f1);
    if (r2 == CUDA_SUCCESS) cuMemFree_v2(q);
    cuStreamSynchronize(s);
    size_t f2 = free_mib();
    CUresult r3 = cuMemAlloc_v2(&q, 512 * MiB);
    t_check(f2 == quota >> 20 && r3 == CUDA_SUCCESS, "after the stream ran the free: free %zu MiB, 512 MiB alloc %d", f2, r3);
    if (r3 == CUDA_SUCCESS) cuMemFree_v2(q);
    t_check(phys_peak(0) <= quota, "device memory used by the claim never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* pool <quota MiB>: memory a pool keeps reserved stays charged until the
 * pool gives it back; reuse inside the pool needs no new quota; an
 * allocation that fits only without the pool's unused reserve trims it. */
static int cmd_pool(uint64_t quota)
{
    cuInit(0);
    primary_on(0);
    CUmemoryPool pool = default_pool(0);
    cuuint64_t keep = ~0ull;
    cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep);
    CUdeviceptr p, q;
    CUresult r = cuMemAllocAsync(&p, 512 * MiB, NULL);
    cuMemFreeAsync(p, NULL);
    cuCtxSynchronize();
    cuuint64_t reserved = 0;
    cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved);
    size_t f1 = free_mib();
    t_check(r == CUDA_SUCCESS && reserved == 512 * MiB && f1 == (quota >> 20) - 512,
            "freed memory the pool keeps (%llu MiB reserved) stays charged: free %zu MiB",
            (unsigned long long)(reserved >> 20), f1);
    CUresult r3 = cuMemAllocAsync(&p, 512 * MiB, NULL);
    t_check(r3 == CUDA_SUCCESS && free_mib() == (quota >> 20) - 512,
            "reuse of the pool's reserve needs no new quota (%d, free %zu MiB)", r3, free_mib());
    cuMemFreeAsync(p, NULL);
    CUresult r2 = cuMemAlloc_v2(&q, 768 * MiB);
    cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved);
    t_check(r2 == CUDA_SUCCESS && reserved == 0,
            "768 MiB fit only without the pool's unused reserve: allocated (%d), pool trimmed to %llu MiB", r2,
            (unsigned long long)(reserved >> 20));
    if (r2 == CUDA_SUCCESS) cuMemFree_v2(q);
    cuMemAllocAsync(&p, 512 * MiB, NULL);
    cuMemFreeAsync(p, NULL);
    cuMemPoolTrimTo(pool, 0);
    size_t f2 = free_mib();
    t_check(f2 == quota >> 20, "after cuMemPoolTrimTo: free %zu MiB", f2);
    /* a pool of its own */
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = 1; props.location.type = CU_MEM_LOCATION_TYPE_DEVICE; props.location.id = 0;
    CUmemoryPool mine = NULL;
    cuMemPoolCreate(&mine, &props);
    int n = 0;
    CUdeviceptr objs[16];
    while (n < 16 && cuMemAllocFromPoolAsync(&objs[n], 256 * MiB, mine, NULL) == CUDA_SUCCESS) n++;
    t_check((uint64_t)n * 256 * MiB == quota, "cuMemPoolCreate'd pool: %d x 256 MiB fit", n);
    for (int i = 0; i < n; i++) cuMemFreeAsync(objs[i], NULL);
    cuMemPoolDestroy(mine);
    t_check(free_mib() == quota >> 20, "destroyed pool's memory returned: free %zu MiB", free_mib());
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* vmm <quota MiB>: cuMemRelease of a mapped allocation frees nothing; the
 * last cuMemUnmap does. */
static int cmd_vmm(uint64_t quota)
{
    cuInit(0);
    primary_on(0);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    CUdeviceptr va, q;
    CUresult r = cuMemCreate(&h, 512 * MiB, &prop, 0);
    cuMemAddressReserve(&va, 1024 * MiB, 0, 0, 0);
    CUresult rm1 = cuMemMap(va, 256 * MiB, 0, h, 0);
    CUresult rm2 = cuMemMap(va + 256 * MiB, 256 * MiB, 256 * MiB, h, 0);
    cuMemRelease(h);
    size_t f1 = free_mib();
    CUresult r2 = cuMemAlloc_v2(&q, 768 * MiB);
    t_check(r == CUDA_SUCCESS && rm1 == CUDA_SUCCESS && rm2 == CUDA_SUCCESS && r2 == CUDA_ERROR_OUT_OF_MEMORY &&
                f1 == (quota >> 20) - 512,
            "released but still mapped: charged (free %zu MiB, 768 MiB alloc %d)", f1, r2);
    if (r2 == CUDA_SUCCESS) cuMemFree_v2(q);
    cuMemUnmap(va, 256 * MiB);
    t_check(free_mib() == (quota >> 20) - 512, "one of two mappings gone: still charged (free %zu MiB)", free_mib());
    cuMemUnmap(va + 256 * MiB, 256 * MiB);
    size_t f2 = free_mib();
    CUresult r3 = cuMemAlloc_v2(&q, 768 * MiB);
    t_check(f2 == quota >> 20 && r3 == CUDA_SUCCESS, "after the last unmap: free %zu MiB, 768 MiB alloc %d", f2, r3);
    if (r3 == CUDA_SUCCESS) cuMemFree_v2(q);
    /* release with no mapping: immediate */
    cuMemCreate(&h, 512 * MiB, &prop, 0);
    cuMemRelease(h);
    t_check(free_mib() == quota >> 20, "unmapped release returns the quota at once (free %zu MiB)", free_mib());
    cuMemAddressFree(va, 1024 * MiB);
    t_check(phys_peak(0) <= quota, "device memory used never exceeded the quota (peak %llu MiB)",
            (unsigned long long)(phys_peak(0) >> 20));
    return 0;
}

/* pooldev <want on device 1>: an allocation from device 1's pool, made
 * while device 0's context is current, counts against device 1's quota. */
static int cmd_pooldev(int want)
{
    cuInit(0);
    CUcontext c1 = primary_on(1);
    (void)c1;
    CUcontext c0 = primary_on(0);
    (void)c0;
    CUmemoryPool pool1 = default_pool(1);
    int n = 0;
    CUdeviceptr objs[64];
    while (n < 64 && cuMemAllocFromPoolAsync(&objs[n], 256 * MiB, pool1, NULL) == CUDA_SUCCESS) n++;
    t_check(n == want, "device 1's pool from device 0's context: %d x 256 MiB fit (device 1's quota allows %d)", n, want);
    for (int i = 0; i < n; i++) cuMemFreeAsync(objs[i], NULL);
    return 0;
}

/* arrays <quota MiB>: every array format is charged what it takes. */
static const struct { CUarray_format f; unsigned ch; const char *name; } formats[] = {
    {CU_AD_FORMAT_UNSIGNED_INT8, 1, "UNSIGNED_INT8x1"}, {CU_AD_FORMAT_UNSIGNED_INT8, 4, "UNSIGNED_INT8x4"},
    {CU_AD_FORMAT_SIGNED_INT8, 2, "SIGNED_INT8x2"}, {CU_AD_FORMAT_UNSIGNED_INT16, 1, "UNSIGNED_INT16"},
    {CU_AD_FORMAT_SIGNED_INT16, 4, "SIGNED_INT16x4"}, {CU_AD_FORMAT_UNSIGNED_INT32, 2, "UNSIGNED_INT32x2"},
    {CU_AD_FORMAT_SIGNED_INT32, 1, "SIGNED_INT32"}, {CU_AD_FORMAT_HALF, 2, "HALFx2"},
    {CU_AD_FORMAT_FLOAT, 4, "FLOATx4"}, {CU_AD_FORMAT_UNORM_INT_101010_2, 4, "UNORM_INT_101010_2"},
    {CU_AD_FORMAT_BC1_UNORM, 4, "BC1_UNORM"}, {CU_AD_FORMAT_BC1_UNORM_SRGB, 4, "BC1_UNORM_SRGB"},
    {CU_AD_FORMAT_BC2_UNORM, 4, "BC2_UNORM"}, {CU_AD_FORMAT_BC2_UNORM_SRGB, 4, "BC2_UNORM_SRGB"},
    {CU_AD_FORMAT_BC3_UNORM, 4, "BC3_UNORM"}, {CU_AD_FORMAT_BC3_UNORM_SRGB, 4, "BC3_UNORM_SRGB"},
    {CU_AD_FORMAT_BC4_UNORM, 1, "BC4_UNORM"}, {CU_AD_FORMAT_BC4_SNORM, 1, "BC4_SNORM"},
    {CU_AD_FORMAT_BC5_UNORM, 2, "BC5_UNORM"}, {CU_AD_FORMAT_BC5_SNORM, 2, "BC5_SNORM"},
    {CU_AD_FORMAT_BC6H_UF16, 3, "BC6H_UF16"}, {CU_AD_FORMAT_BC6H_SF16, 3, "BC6H_SF16"},
    {CU_AD_FORMAT_BC7_UNORM, 4, "BC7_UNORM"}, {CU_AD_FORMAT_BC7_UNORM_SRGB, 4, "BC7_UNORM_SRGB"},
    {CU_AD_FORMAT_P010, 3, "P010"}, {CU_AD_FORMAT_P016, 3, "P016"}, {CU_AD_FORMAT_NV16, 3, "NV16"},
    {CU_AD_FORMAT_P210, 3, "P210"}, {CU_AD_FORMAT_P216, 3, "P216"}, {CU_AD_FORMAT_YUY2, 3, "YUY2"},
    {CU_AD_FORMAT_Y210, 3, "Y210"}, {CU_AD_FORMAT_Y216, 3, "Y216"}, {CU_AD_FORMAT_AYUV, 4, "AYUV"},
    {CU_AD_FORMAT_Y410, 4, "Y410"}, {CU_AD_FORMAT_NV12, 3, "NV12"}, {CU_AD_FORMAT_Y416, 4, "Y416"},
    {CU_AD_FORMAT_Y444_PLANAR8, 3, "Y444_PLANAR8"}, {CU_AD_FORMAT_Y444_PLANAR10, 3, "Y444_PLANAR10"},
    {CU_AD_FORMAT_YUV444_8bit_SemiPlanar, 3, "YUV444_8bit_SemiPlanar"},
    {CU_AD_FORMAT_YUV444_16bit_SemiPlanar, 3, "YUV444_16bit_SemiPlanar"},
    {CU_AD_FORMAT_UNORM_INT8X1, 1, "UNORM_INT8X1"}, {CU_AD_FORMAT_UNORM_INT8X2, 2, "UNORM_INT8X2"},
    {CU_AD_FORMAT_UNORM_INT8X4, 4, "UNORM_INT8X4"}, {CU_AD_FORMAT_UNORM_INT16X1, 1, "UNORM_INT16X1"},
    {CU_AD_FORMAT_UNORM_INT16X2, 2, "UNORM_INT16X2"}, {CU_AD_FORMAT_UNORM_INT16X4, 4, "UNORM_INT16X4"},
    {CU_AD_FORMAT_SNORM_INT8X1, 1, "SNORM_INT8X1"}, {CU_AD_FORMAT_SNORM_INT8X2, 2, "SNORM_INT8X2"},
    {CU_AD_FORMAT_SNORM_INT8X4, 4, "SNORM_INT8X4"}, {CU_AD_FORMAT_SNORM_INT16X1, 1, "SNORM_INT16X1"},
    {CU_AD_FORMAT_SNORM_INT16X2, 2, "SNORM_INT16X2"}, {CU_AD_FORMAT_SNORM_INT16X4, 4, "SNORM_INT16X4"},
};

static int fill_arrays(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels, uint64_t *size)
{
    static uint64_t objs[4096];
    int n = 0;
    *size = 0;
#ifndef VGPU_REAL_GPU
    uint64_t phys0 = fg_state()->dev[0].phys_used;
#endif
    for (; n < 4096; n++) {
        CUresult r;
        if (levels) { CUmipmappedArray m; r = cuMipmappedArrayCreate(&m, d, levels); objs[n] = (uintptr_t)m; }
        else { CUarray a; r = cuArray3DCreate_v2(&a, d); objs[n] = (uintptr_t)a; }
        if (r != CUDA_SUCCESS) break;
        if (n == 0) {
            CUDA_ARRAY_MEMORY_REQUIREMENTS req = {0, 0, {0}};
            if (levels) cuMipmappedArrayGetMemoryRequirements(&req, (CUmipmappedArray)(uintptr_t)objs[0], 0);
            else cuArrayGetMemoryRequirements(&req, (CUarray)(uintptr_t)objs[0], 0);
            *size = req.size;
#ifndef VGPU_REAL_GPU
            /* the driver may not say: what the fake GPU lost is the truth */
            if (!*size) *size = fg_state()->dev[0].phys_used - phys0;
#endif
        }
    }
    for (int i = 0; i < n; i++) {
        if (levels) cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)objs[i]);
        else cuArrayDestroy((CUarray)(uintptr_t)objs[i]);
    }
    return n;
}

static int cmd_arrays(uint64_t quota)
{
    cuInit(0);
    primary_on(0);
    for (unsigned i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        CUDA_ARRAY3D_DESCRIPTOR d = {1000, 1000, 0, formats[i].f, formats[i].ch, 0};
        uint64_t size;
        int n = fill_arrays(&d, 0, &size);
        uint64_t want = size ? quota / size : 0;
        t_check(size && (uint64_t)n == want, "array %s 1000x1000: %d fit in %llu MiB (driver size %llu bytes, want %llu)",
                formats[i].name, n, (unsigned long long)(quota >> 20), (unsigned long long)size,
                (unsigned long long)want);
    }
    CUDA_ARRAY3D_DESCRIPTOR layered = {512, 512, 6, CU_AD_FORMAT_BC7_UNORM, 4, 0x01};
    CUDA_ARRAY3D_DESCRIPTOR nv12 = {1920, 1080, 0, CU_AD_FORMAT_NV12, 3, 0};
    uint64_t size;
    int n = fill_arrays(&layered, 5, &size);
    t_check(size && (uint64_t)n == quota / size, "mipmapped layered BC7 512x512x6, 5 levels: %d fit (size %llu)", n,
            (unsigned long long)size);
    n = fill_arrays(&nv12, 0, &size);
    t_check(size && (uint64_t)n == quota / size, "NV12 1920x1080 video frames: %d fit (size %llu)", n,
            (unsigned long long)size);
    t_check(free_mib() == quota >> 20, "every array's quota returned (free %zu MiB)", free_mib());
    return 0;
}

/* early <want>: cuMemCreate before cuInit fails and must not switch the
 * limits off for the rest of the process. */
static int cmd_early(int want)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    CUresult r0 = cuMemCreate(&h, 256 * MiB, &prop, 0);
    cuInit(0);
    primary_on(0);
    uint64_t objs[64];
    CUresult last;
    struct api a;
    api_linked(&a);
    int n = fill(&a, 0, 0, want, objs, &last);
    t_check(r0 == CUDA_ERROR_NOT_INITIALIZED && n == want, "cuMemCreate before cuInit (%d), then %d x 256 MiB fit (want %d)",
            r0, n, want);
    return 0;
}

/* forknvml <forks>: a thread polls NVML memory (as monitoring threads do)
 * while the main thread forks; every child can use libvgpu at once. */
static volatile int poll_stop;
static void *nvml_poller(void *arg)
{
    (void)arg;
    nvmlInit_v2();
    unsigned cnt = 0;
    nvmlDeviceGetCount_v2(&cnt);
    while (!poll_stop)
        for (unsigned i = 0; i < cnt; i++) {
            nvmlDevice_t h;
            nvmlMemory_t m;
            if (nvmlDeviceGetHandleByIndex_v2(i, &h) == NVML_SUCCESS) nvmlDeviceGetMemoryInfo(h, &m);
        }
    return NULL;
}
static int cmd_forknvml(int forks)
{
    cuInit(0);
    primary_on(0);
    pthread_t th;
    pthread_create(&th, NULL, nvml_poller, NULL);
    usleep(50000);
    int hung = 0, failed = 0;
    for (int i = 0; i < forks; i++) {
        pid_t c = fork();
        if (c == 0) {
            alarm(5);
            nvmlDevice_t h;
            nvmlMemory_t m;
            nvmlDeviceGetHandleByIndex_v2(0, &h);
            if (nvmlDeviceGetMemoryInfo(h, &m)) _exit(2);
            primary_on(0);
            CUdeviceptr p;
            if (cuMemAlloc_v2(&p, 64 * MiB)) _exit(3);
            cuMemFree_v2(p);
            _exit(0);
        }
        int st;
        waitpid(c, &st, 0);
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) hung++;
        else if (!WIFEXITED(st) || WEXITSTATUS(st)) failed++;
    }
    poll_stop = 1;
    pthread_join(th, NULL);
    t_check(hung == 0 && failed == 0, "%d forks beside an NVML polling thread: %d children hung, %d failed", forks, hung,
            failed);
    return 0;
}

/* manysmall <n>: more live allocations than the allocation table's first
 * size, with growing it failing (tests/lib/failcalloc.c): no hang, refused
 * allocations are OOM, and every quota byte comes back. */
static int cmd_manysmall(int n, uint64_t quota)
{
    alarm(30);
    cuInit(0);
    primary_on(0);
    CUdeviceptr *p = malloc((size_t)n * sizeof *p);
    int ok = 0, oom = 0, other = 0;
    for (int i = 0; i < n; i++) {
        CUresult r = cuMemAlloc_v2(&p[ok], MiB);
        if (r == CUDA_SUCCESS) ok++;
        else if (r == CUDA_ERROR_OUT_OF_MEMORY) oom++;
        else other++;
    }
    for (int i = 0; i < ok; i++) cuMemFree_v2(p[i]);
    free(p);
    t_check(other == 0 && ok + oom == n && ok >= 700, "%d small allocations with the table unable to grow: %d held, %d refused",
            n, ok, oom);
    t_check(free_mib() == quota >> 20, "all quota back after the frees (free %zu MiB)", free_mib());
    return 0;
}

/* shim <want>: libcuda.so.1 is a forwarding shim that looks the real
 * driver's functions up with dlsym (tests/lib/shim_cuda.c); the hooks must
 * reach the real driver, not themselves. */
static int cmd_shim(int want)
{
    alarm(10);
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    __typeof__(&cuInit) init = (__typeof__(init))dlsym(h, "cuInit");
    __typeof__(&cuDevicePrimaryCtxRetain) retain = (__typeof__(retain))dlsym(h, "cuDevicePrimaryCtxRetain");
    __typeof__(&cuCtxSetCurrent) setcur = (__typeof__(setcur))dlsym(h, "cuCtxSetCurrent");
    __typeof__(&cuMemAlloc_v2) alloc = (__typeof__(alloc))dlsym(h, "cuMemAlloc_v2");
    if (!init || !retain || !setcur || !alloc) { t_check(0, "shim exports the driver API"); return 0; }
    init(0);
    CUcontext c;
    retain(&c, 0);
    setcur(c);
    int n = 0;
    CUdeviceptr p;
    while (n < 64 && alloc(&p, 256 * MiB) == CUDA_SUCCESS) n++;
    t_check(n == want, "through a forwarding libcuda.so.1: %d x 256 MiB fit (want %d)", n, want);
    return 0;
}

/* dlsym semantics: hooks are handed out, RTLD_NEXT stays caller-relative */
static int cmd_dlsym(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    void *f = dlsym(h, "cuMemAlloc_v2");
    Dl_info di;
    int in_vgpu = f && dladdr(f, &di) && strstr(di.dli_fname, "libvgpu");
    t_check(in_vgpu, "dlsym(libcuda, cuMemAlloc_v2) is libvgpu's hook (%s)", f && dladdr(f, &di) ? di.dli_fname : "?");
    void *g = dlsym(h, "cuStreamCreate");
    int in_fake = g && dladdr(g, &di) && strstr(di.dli_fname, "libcuda");
    t_check(in_fake, "dlsym(libcuda, cuStreamCreate) is the driver's own function");
    void *n = dlsym(RTLD_NEXT, "malloc");
    int libc = n && dladdr(n, &di) && (strstr(di.dli_fname, "libc.so") || strstr(di.dli_fname, "libasan"));
    t_check(libc, "dlsym(RTLD_NEXT, malloc) from the program is libc's (%s)", libc ? di.dli_fname : "?");
    t_check(dlsym(h, "cuNoSuchFunction") == NULL, "unknown symbols stay unknown");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    const char *c = argv[1];
    int r = 2;
    if (!strcmp(c, "apis")) r = cmd_apis(argv[2], atoi(argv[3]));
    else if (!strcmp(c, "meminfo")) r = cmd_meminfo(argv[2], strtoull(argv[3], 0, 10) * MiB);
    else if (!strcmp(c, "physfree")) r = cmd_physfree();
    else if (!strcmp(c, "two")) r = cmd_two(argc, argv);
    else if (!strcmp(c, "nvml")) r = cmd_nvml((unsigned)atoi(argv[2]), strtoull(argv[3], 0, 10));
    else if (!strcmp(c, "concurrent")) r = cmd_concurrent(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], 0, 10) * MiB);
    else if (!strcmp(c, "kill")) r = cmd_kill(argv[2], strtoull(argv[3], 0, 10) * MiB, argv[4]);
    else if (!strcmp(c, "kill-child")) r = cmd_kill_child(argv[2], argv[3]);
    else if (!strcmp(c, "fork")) r = cmd_fork(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "hold")) r = cmd_hold(atoi(argv[2]), argv[3]);
    else if (!strcmp(c, "fillcount")) r = cmd_fillcount();
    else if (!strcmp(c, "dlsym")) r = cmd_dlsym();
    else if (!strcmp(c, "ctxfill")) r = cmd_ctxfill(argv[2]);
    else if (!strcmp(c, "claims")) r = cmd_claims(atoi(argv[2]), strtoull(argv[3], 0, 10) * MiB, strtoull(argv[4], 0, 10) * MiB, argv[5]);
    else if (!strcmp(c, "module"))
        r = cmd_module(strtoull(argv[2], 0, 10) * MiB, strtoull(argv[3], 0, 10) * MiB, argc > 4 ? argv[4] : "data");
    else if (!strcmp(c, "ctxrace"))
        r = cmd_ctxrace(strtoull(argv[2], 0, 10) * MiB, strtoull(argv[3], 0, 10) * MiB, strtoull(argv[4], 0, 10) * MiB,
                        argv[5]);
    else if (!strcmp(c, "lazyload"))
        r = cmd_lazyload(strtoull(argv[2], 0, 10) * MiB, strtoull(argv[3], 0, 10) * MiB, atoi(argv[4]));
    else if (!strcmp(c, "graphmem")) r = cmd_graphmem(strtoull(argv[2], 0, 10) * MiB, strtoull(argv[3], 0, 10) * MiB);
    else if (!strcmp(c, "asyncfreeplain")) r = cmd_asyncfreeplain(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "ctxcreate"))
        r = cmd_ctxcreate(strtoull(argv[2], 0, 10) * MiB, strtoull(argv[3], 0, 10) * MiB, argc > 4 ? argv[4] : "v2");
    else if (!strcmp(c, "asyncfree")) r = cmd_asyncfree(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "pool")) r = cmd_pool(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "vmm")) r = cmd_vmm(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "pooldev")) r = cmd_pooldev(atoi(argv[2]));
    else if (!strcmp(c, "arrays")) r = cmd_arrays(strtoull(argv[2], 0, 10) * MiB);
    else if (!strcmp(c, "early")) r = cmd_early(atoi(argv[2]));
    else if (!strcmp(c, "forknvml")) r = cmd_forknvml(atoi(argv[2]));
    else if (!strcmp(c, "manysmall")) r = cmd_manysmall(atoi(argv[2]), strtoull(argv[3], 0, 10) * MiB);
    else if (!strcmp(c, "shim")) r = cmd_shim(atoi(argv[2]));
    else fprintf(stderr, "unknown command %s\n", c);
    return r ? r : (t_failed ? 1 : 0);
}
