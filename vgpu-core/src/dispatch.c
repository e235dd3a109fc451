#define _GNU_SOURCE
#include "dispatch.h"
#include "config.h"
#include <link.h>
#include "log.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *vgpu_real_fn[H_COUNT];

static const char *const names[H_COUNT] = {
#define VGPU_NAME(name, hooked) #name,
    VGPU_CUDA_FUNCS(VGPU_NAME)
    VGPU_NVML_FUNCS(VGPU_NAME)
#undef VGPU_NAME
};

/* Our hooks; NULL for functions we only call. */
#define VGPU_HOOK_ADDR(name, hooked) hooked ? (void *)&name : (void *)0,
static void *const hooks[H_COUNT] = {
    VGPU_CUDA_FUNCS(VGPU_HOOK_ADDR)
    VGPU_NVML_FUNCS(VGPU_HOOK_ADDR)
};

/* dlsym runs before sanitizer runtimes finish starting (they look up their
 * interceptors through it), so it and its callees stay uninstrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn real_dlsym_ptr;

NO_SANITIZE void *vgpu_real_dlsym(void *handle, const char *name)
{
    dlsym_fn f = __atomic_load_n(&real_dlsym_ptr, __ATOMIC_ACQUIRE);
    if (!f) {
        /* glibc >= 2.34 defines dlsym in libc as GLIBC_2.34 and keeps the old
         * version for old binaries; dlvsym is not intercepted. */
        static const char *const vers[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
        for (unsigned i = 0; !f && i < sizeof vers / sizeof vers[0]; i++)
            f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", vers[i]);
        /* never abort the process libvgpu is loaded into */
        if (!f) { LOG_ERR("cannot find the real dlsym: no symbol lookups through dlsym will work"); return NULL; }
        __atomic_store_n(&real_dlsym_ptr, f, __ATOMIC_RELEASE);
    }
    return f(handle, name);
}

/* Stand-in for a driver function this driver version lacks. */
static CUresult missing_function(void) { return CUDA_ERROR_NOT_SUPPORTED; }

static void *cuda_handle, *nvml_handle;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
/* Set while this thread loads a driver library: whatever that library looks
 * up with dlsym then (a forwarding driver's constructor) gets real symbols. */
static __thread int loading;

static void load_all(void)
{
    const char *cu = getenv("VGPU_REAL_LIBCUDA");
    loading = 1;
    void *lib = dlopen(cu && *cu ? cu : "libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    loading = 0;
    __atomic_store_n(&cuda_handle, lib, __ATOMIC_RELEASE);
    if (!cuda_handle) LOG_WARN("cannot load the CUDA driver: %s", dlerror());
    for (int h = 0; h < H_CUDA_COUNT; h++) {
        void *f = cuda_handle ? vgpu_real_dlsym(cuda_handle, names[h]) : NULL;
        __atomic_store_n(&vgpu_real_fn[h], f ? f : (void *)&missing_function, __ATOMIC_RELEASE);
    }
}

static void load_nvml(void)
{
    const char *nv = getenv("VGPU_REAL_LIBNVML");
    loading = 1;
    void *lib = dlopen(nv && *nv ? nv : "libnvidia-ml.so.1", RTLD_NOW | RTLD_GLOBAL);
    loading = 0;
    __atomic_store_n(&nvml_handle, lib, __ATOMIC_RELEASE);
    if (!nvml_handle) LOG_WARN("cannot load NVML: %s", dlerror());
    for (int h = H_NVML_BASE + 1; h < H_COUNT; h++) {
        void *f = nvml_handle ? vgpu_real_dlsym(nvml_handle, names[h]) : NULL;
        __atomic_store_n(&vgpu_real_fn[h], f ? f : (void *)&missing_function, __ATOMIC_RELEASE);
    }
}
static pthread_once_t nvml_once = PTHREAD_ONCE_INIT;

void *vgpu_resolve(int h)
{
    /* the first driver call may come before libvgpu's constructor (from
     * another library's constructor): configure first */
    vgpu_ensure_init();
    if (h < H_CUDA_COUNT) pthread_once(&load_once, load_all);
    else pthread_once(&nvml_once, load_nvml);
    return __atomic_load_n(&vgpu_real_fn[h], __ATOMIC_ACQUIRE);
}

static NO_SANITIZE int same(const char *a, const char *b)
{
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

NO_SANITIZE void *vgpu_hook_for_name(const char *name)
{
    for (int h = 0; h < H_COUNT; h++)
        if (hooks[h] && same(names[h], name)) return hooks[h];
    return NULL;
}

/* How CUDA names versioned entry points: cuGetProcAddress receives the base
 * name and the CUDA version the caller was built for. */
static const struct { const char *base; int since; const char *suffix; } versioned[] = {
    {"cuGetProcAddress", 12000, "_v2"},
    {"cuMemAlloc", 3020, "_v2"}, {"cuMemAllocPitch", 3020, "_v2"},
    {"cuMemFree", 3020, "_v2"}, {"cuMemGetInfo", 3020, "_v2"},
    {"cuDeviceTotalMem", 3020, "_v2"}, {"cuArrayCreate", 3020, "_v2"},
    {"cuArray3DCreate", 3020, "_v2"},
    /* newest first: a caller built for 11.4+ gets _v3, for 12.5+ _v4 */
    {"cuCtxCreate", 12050, "_v4"}, {"cuCtxCreate", 11040, "_v3"}, {"cuCtxCreate", 3020, "_v2"},
    {"cuCtxDestroy", 4000, "_v2"},
    {"cuDevicePrimaryCtxRelease", 11000, "_v2"},
    {"cuDevicePrimaryCtxReset", 11000, "_v2"}, {"cuStreamDestroy", 4000, "_v2"},
    {"cuStreamBeginCapture", 10010, "_v2"},
};
/* Entry points that have a per-thread-default-stream variant. */
static const char *const ptsz[] = {
    "cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel", "cuGraphLaunch",
    "cuMemAllocAsync", "cuMemFreeAsync", "cuMemAllocFromPoolAsync", "cuStreamBeginCapture",
};

void *vgpu_hook_for_proc(const char *sym, void *real_pfn, int ver, cuuint64_t flags)
{
    if (!sym || !real_pfn) return real_pfn;
    vgpu_resolve(0);
    /* 1. The driver handed out one of its exported functions: exact. */
    for (int h = 0; h < H_CUDA_COUNT; h++)
        if (hooks[h] && vgpu_real_fn[h] == real_pfn) return hooks[h];
    /* 2. An internal address: map (name, version, flags) to the exported name. */
    char name[128];
    snprintf(name, sizeof name, "%s", sym);
    for (unsigned i = 0; i < sizeof versioned / sizeof versioned[0]; i++)
        if (!strcmp(sym, versioned[i].base) && ver >= versioned[i].since) {
            snprintf(name, sizeof name, "%s%s", sym, versioned[i].suffix);
            break;
        }
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
        for (unsigned i = 0; i < sizeof ptsz / sizeof ptsz[0]; i++)
            if (!strcmp(sym, ptsz[i])) { snprintf(name, sizeof name, "%s_ptsz", sym); break; }
    for (int h = 0; h < H_CUDA_COUNT; h++)
        if (hooks[h] && !strcmp(names[h], name)) {
            /* if we could not resolve it by name, the driver's pointer is the real one */
            if (vgpu_real_fn[h] == (void *)&missing_function)
                __atomic_store_n(&vgpu_real_fn[h], real_pfn, __ATOMIC_RELEASE);
            LOG_DEBUG("cuGetProcAddress(%s, %d, %llu) -> hook %s", sym, ver, (unsigned long long)flags, name);
            return hooks[h];
        }
    if (!strncmp(sym, "cu", 2) && vgpu_hook_for_name(sym))
        LOG_WARN("cuGetProcAddress(%s, %d): version not mapped, not intercepted", sym, ver);
    return real_pfn;
}

/* Is the caller the driver library libvgpu itself loaded? A forwarding
 * libcuda.so.1 (a shim that looks the real driver up with dlsym) must get
 * the real functions, or hook -> shim -> hook recursion follows. In glibc a
 * dlopen handle is the object's link map. */
/* noinline: its address-taken locals must not live in dlsym's frame, or the
 * compiler cannot make dlsym's last call a tail call (RTLD_NEXT needs it). */
static NO_SANITIZE __attribute__((noinline)) int from_driver(const void *caller)
{
    void *cu = __atomic_load_n(&cuda_handle, __ATOMIC_ACQUIRE), *nv = __atomic_load_n(&nvml_handle, __ATOMIC_ACQUIRE);
    if (!cu && !nv) return 0;
    Dl_info info;
    struct link_map *lm = NULL;
    if (!dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm) return 0;
    return (void *)lm == cu || (void *)lm == nv;
}

/* dlsym interception: every lookup of a hooked driver/NVML name answers our
 * hook, provided the handle really has the symbol, unless the driver itself
 * asks. Anything else is a tail call to the real dlsym so that RTLD_NEXT
 * stays relative to the caller. */
VGPU_EXPORT NO_SANITIZE void *dlsym(void *handle, const char *name)
{
    const char *n = name;
    __asm__("" : "+r"(n)); /* glibc declares name nonnull; callers do pass NULL */
    if (n && ((name[0] == 'c' && name[1] == 'u') || (name[0] == 'n' && name[1] == 'v')) && !loading &&
        !from_driver(__builtin_return_address(0))) {
        void *hook = vgpu_hook_for_name(name);
        if (hook && (handle == RTLD_NEXT || vgpu_real_dlsym(handle, name))) return hook;
    }
    return vgpu_real_dlsym(handle, name);
}
