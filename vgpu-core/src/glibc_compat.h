/* Bind libvgpu's references to the oldest glibc symbol versions that have
 * them, so that one build loads into workload images with glibc back to
 * 2.17 (README "Loading"). glibc 2.34 moved libdl and libpthread into libc
 * and gave the moved functions new default versions (dlopen@@GLIBC_2.34,
 * pthread_once@@GLIBC_2.34, ...) while keeping the old ones; a library
 * linked on a new system would otherwise require glibc 2.34. Included into
 * every object of libvgpu by the Makefile (-include). Symbols not named
 * here must not be newer than 2.17: tests/mem_tests.sh checks the built
 * library. */
#ifndef VGPU_GLIBC_COMPAT_H
#define VGPU_GLIBC_COMPAT_H
#if defined(__GLIBC__) || defined(__linux__)
#if defined(__x86_64__)
#define VGPU_GLIBC_OLD(sym, ver) __asm__(".symver " #sym "," #sym "@" ver);
#define VGPU_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define VGPU_GLIBC_OLD(sym, ver) __asm__(".symver " #sym "," #sym "@GLIBC_2.17");
#define VGPU_GLIBC_BASE "GLIBC_2.17"
#endif
#ifdef VGPU_GLIBC_OLD
VGPU_GLIBC_OLD(dlopen, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(dlerror, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(dlvsym, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(dladdr, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(dladdr1, "GLIBC_2.3.3")
VGPU_GLIBC_OLD(pthread_once, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_mutex_trylock, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_key_create, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_getspecific, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_setspecific, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_create, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_join, VGPU_GLIBC_BASE)
VGPU_GLIBC_OLD(pthread_detach, VGPU_GLIBC_BASE)
#endif
#endif
#endif
