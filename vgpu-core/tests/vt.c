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
    CUdeviceptr p;
    a.alloc(&p, 256 * MiB);
    size_t f, t;
    a.info(&f, &t);
    t_check(t == quota && f == quota - 256 * MiB, "cuMemGetInfo via %s: total %zu MiB free %zu MiB (quota %llu MiB, 256 MiB used)",
            path, t >> 20, f >> 20, (unsigned long long)(quota >> 20));
    size_t tot;
    a.total(&tot, 0);
    t_check(tot == quota, "cuDeviceTotalMem via %s: %zu MiB", path, tot >> 20);
    unsigned long long nt = 0, nf = 0;
    for (int v2 = 0; v2 < 2; v2++) {
        int r = nvml_mem(0, &nt, &nf, v2);
        t_check(!r && nt == quota && nf == quota - 256 * MiB, "nvmlDeviceGetMemoryInfo%s: total %llu MiB free %llu MiB",
                v2 ? "_v2" : "", nt >> 20, nf >> 20);
    }
    /* NVML through dlopen+dlsym, as nvidia-smi does */
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    __typeof__(&nvmlDeviceGetMemoryInfo) gm = (__typeof__(gm))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvmlDevice_t d;
    nvmlDeviceGetHandleByIndex_v2(0, &d);
    nvmlMemory_t m;
    gm(d, &m);
    t_check(m.total == quota && m.free == quota - 256 * MiB, "nvmlDeviceGetMemoryInfo via dlsym: total %llu MiB", m.total >> 20);
    a.fr(p);
    a.info(&f, &t);
    t_check(f == quota, "free after cuMemFree: %zu MiB", f >> 20);
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
    int n;
    cuDeviceGetCount(&n);
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
    /* a new process sees the full quota again */
    cuInit(0);
    ctx_on(0);
    size_t f, t;
    cuMemGetInfo_v2(&f, &t);
    t_check(f == quota, "after all exited, free = quota (%zu MiB)", f >> 20);
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
    uint64_t objs[64];
    CUresult last;
    struct api a;
    api_linked(&a);
    int n = fill(&a, 0, 0, 0, objs, &last);
    t_check((uint64_t)n * 256 * MiB == quota, "after SIGKILL %s: %d x 256 MiB fit again (quota %llu MiB)", mode, n,
            (unsigned long long)(quota >> 20));
    size_t f, t;
    for (int i = 0; i < n; i++) cuMemFree_v2(objs[i]);
    cuMemGetInfo_v2(&f, &t);
    t_check(f == quota && t == quota, "free memory is sane after the kill: %zu MiB of %zu MiB", f >> 20, t >> 20);
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
    else fprintf(stderr, "unknown command %s\n", c);
    return r ? r : (t_failed ? 1 : 0);
}
