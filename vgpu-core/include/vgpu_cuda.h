/* The subset of the CUDA driver API that libvgpu and the fake driver use.
 * Declared here so nothing needs the CUDA toolkit to build. Layouts follow
 * the driver ABI (x86_64/aarch64 LP64). */
#ifndef VGPU_CUDA_H
#define VGPU_CUDA_H
#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_CONTEXT_IS_DESTROYED = 709,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
    CUDA_ERROR_UNKNOWN = 999,
};

typedef int CUdevice;
typedef uint64_t CUdeviceptr;
typedef uint64_t cuuint64_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUlib_st *CUlibrary;
/* Only passed through by pointer: CUjit_option and CUlibraryOption are
 * enums, CUexecAffinityParam and CUctxCreateParams structs in cuda.h. */
typedef int CUjit_option;
typedef int CUlibraryOption;
typedef struct CUexecAffinityParam_st CUexecAffinityParam;
typedef struct CUctxCreateParams_st CUctxCreateParams;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUarray_st *CUarray;
typedef struct CUmipmappedArray_st *CUmipmappedArray;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUgraph_st *CUgraph;
/* CUstreamCaptureMode and CUstreamCaptureStatus */
enum { CU_STREAM_CAPTURE_MODE_GLOBAL = 0, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1, CU_STREAM_CAPTURE_MODE_RELAXED = 2 };
enum { CU_STREAM_CAPTURE_STATUS_NONE = 0, CU_STREAM_CAPTURE_STATUS_ACTIVE = 1, CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2 };
typedef uint64_t CUmemGenericAllocationHandle;

typedef struct { char bytes[16]; } CUuuid;

typedef enum {
    CU_AD_FORMAT_UNSIGNED_INT8 = 0x01, CU_AD_FORMAT_UNSIGNED_INT16 = 0x02,
    CU_AD_FORMAT_UNSIGNED_INT32 = 0x03, CU_AD_FORMAT_SIGNED_INT8 = 0x08,
    CU_AD_FORMAT_SIGNED_INT16 = 0x09, CU_AD_FORMAT_SIGNED_INT32 = 0x0a,
    CU_AD_FORMAT_HALF = 0x10, CU_AD_FORMAT_FLOAT = 0x20,
    CU_AD_FORMAT_UNORM_INT_101010_2 = 0x50,
    CU_AD_FORMAT_BC1_UNORM = 0x91, CU_AD_FORMAT_BC1_UNORM_SRGB = 0x92,
    CU_AD_FORMAT_BC2_UNORM = 0x93, CU_AD_FORMAT_BC2_UNORM_SRGB = 0x94,
    CU_AD_FORMAT_BC3_UNORM = 0x95, CU_AD_FORMAT_BC3_UNORM_SRGB = 0x96,
    CU_AD_FORMAT_BC4_UNORM = 0x97, CU_AD_FORMAT_BC4_SNORM = 0x98,
    CU_AD_FORMAT_BC5_UNORM = 0x99, CU_AD_FORMAT_BC5_SNORM = 0x9a,
    CU_AD_FORMAT_BC6H_UF16 = 0x9b, CU_AD_FORMAT_BC6H_SF16 = 0x9c,
    CU_AD_FORMAT_BC7_UNORM = 0x9d, CU_AD_FORMAT_BC7_UNORM_SRGB = 0x9e,
    CU_AD_FORMAT_P010 = 0x9f, CU_AD_FORMAT_P016 = 0xa1, CU_AD_FORMAT_NV16 = 0xa2,
    CU_AD_FORMAT_P210 = 0xa3, CU_AD_FORMAT_P216 = 0xa4, CU_AD_FORMAT_YUY2 = 0xa5,
    CU_AD_FORMAT_Y210 = 0xa6, CU_AD_FORMAT_Y216 = 0xa7, CU_AD_FORMAT_AYUV = 0xa8,
    CU_AD_FORMAT_Y410 = 0xa9, CU_AD_FORMAT_NV12 = 0xb0, CU_AD_FORMAT_Y416 = 0xb1,
    CU_AD_FORMAT_Y444_PLANAR8 = 0xb2, CU_AD_FORMAT_Y444_PLANAR10 = 0xb3,
    CU_AD_FORMAT_YUV444_8bit_SemiPlanar = 0xb4, CU_AD_FORMAT_YUV444_16bit_SemiPlanar = 0xb5,
    CU_AD_FORMAT_UNORM_INT8X1 = 0xc0, CU_AD_FORMAT_UNORM_INT8X2 = 0xc1,
    CU_AD_FORMAT_UNORM_INT8X4 = 0xc2, CU_AD_FORMAT_UNORM_INT16X1 = 0xc3,
    CU_AD_FORMAT_UNORM_INT16X2 = 0xc4, CU_AD_FORMAT_UNORM_INT16X4 = 0xc5,
    CU_AD_FORMAT_SNORM_INT8X1 = 0xc6, CU_AD_FORMAT_SNORM_INT8X2 = 0xc7,
    CU_AD_FORMAT_SNORM_INT8X4 = 0xc8, CU_AD_FORMAT_SNORM_INT16X1 = 0xc9,
    CU_AD_FORMAT_SNORM_INT16X2 = 0xca, CU_AD_FORMAT_SNORM_INT16X4 = 0xcb,
} CUarray_format;

typedef struct {
    size_t Width, Height;
    CUarray_format Format;
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct {
    size_t Width, Height, Depth;
    CUarray_format Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

typedef struct { int type; int id; } CUmemLocation;
#define CU_MEM_LOCATION_TYPE_DEVICE 1

/* Stream-ordered allocator: memory pools. */
typedef struct {
    int allocType;            /* CU_MEM_ALLOCATION_TYPE_PINNED = 1 */
    int handleTypes;
    CUmemLocation location;
    void *win32SecurityAttributes;
    size_t maxSize;
    unsigned short usage;
    unsigned char reserved[54];
} CUmemPoolProps;
typedef enum {
    CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES = 1, CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC = 2,
    CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES = 3, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4,
    CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT = 5, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH = 6,
    CU_MEMPOOL_ATTR_USED_MEM_CURRENT = 7, CU_MEMPOOL_ATTR_USED_MEM_HIGH = 8,
} CUmemPool_attribute;

typedef struct { size_t size, alignment; unsigned int reserved[4]; } CUDA_ARRAY_MEMORY_REQUIREMENTS;
typedef struct {
    int type;                 /* CU_MEM_ALLOCATION_TYPE_PINNED = 1 */
    int requestedHandleTypes;
    CUmemLocation location;   /* type 1 = device, id = ordinal */
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType, gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct CUlaunchAttribute_st { int id; char pad[4]; char value[64]; } CUlaunchAttribute;
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

typedef int CUdriverProcAddressQueryResult;
#define CU_GET_PROC_ADDRESS_DEFAULT 0
#define CU_GET_PROC_ADDRESS_LEGACY_STREAM 1
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2
#define CU_EVENT_DEFAULT 0
#define CU_EVENT_BLOCKING_SYNC 1
#define CU_EVENT_DISABLE_TIMING 2
#define CU_STREAM_NON_BLOCKING 1
#define CU_STREAM_PER_THREAD ((CUstream)0x2)
#define CU_MEM_ATTACH_GLOBAL 1

/* Prototypes: the hooks in libvgpu and the fake driver both define these. */
#define VGPU_CUDA_PROTOS(X) \
X(CUresult, cuInit, (unsigned int flags)) \
X(CUresult, cuDriverGetVersion, (int *v)) \
X(CUresult, cuDeviceGet, (CUdevice *d, int ordinal)) \
X(CUresult, cuDeviceGetCount, (int *n)) \
X(CUresult, cuDeviceGetUuid, (CUuuid *u, CUdevice d)) \
X(CUresult, cuDeviceGetUuid_v2, (CUuuid *u, CUdevice d)) \
X(CUresult, cuDeviceGetPCIBusId, (char *buf, int len, CUdevice d)) \
X(CUresult, cuDeviceTotalMem_v2, (size_t *bytes, CUdevice d)) \
X(CUresult, cuCtxCreate_v2, (CUcontext *c, unsigned int flags, CUdevice d)) \
X(CUresult, cuCtxCreate_v3, (CUcontext *c, CUexecAffinityParam *params, int nparams, unsigned int flags, CUdevice d)) \
X(CUresult, cuCtxCreate_v4, (CUcontext *c, CUctxCreateParams *params, unsigned int flags, CUdevice d)) \
X(CUresult, cuCtxDestroy_v2, (CUcontext c)) \
X(CUresult, cuCtxSetCurrent, (CUcontext c)) \
X(CUresult, cuCtxGetCurrent, (CUcontext *c)) \
X(CUresult, cuCtxGetDevice, (CUdevice *d)) \
X(CUresult, cuCtxSynchronize, (void)) \
X(CUresult, cuDevicePrimaryCtxRetain, (CUcontext *c, CUdevice d)) \
X(CUresult, cuDevicePrimaryCtxRelease_v2, (CUdevice d)) \
X(CUresult, cuGetProcAddress, (const char *sym, void **pfn, int ver, cuuint64_t flags)) \
X(CUresult, cuGetProcAddress_v2, (const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st)) \
X(CUresult, cuMemAlloc_v2, (CUdeviceptr *p, size_t n)) \
X(CUresult, cuMemAllocPitch_v2, (CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int esz)) \
X(CUresult, cuMemAllocManaged, (CUdeviceptr *p, size_t n, unsigned int flags)) \
X(CUresult, cuMemAllocAsync, (CUdeviceptr *p, size_t n, CUstream s)) \
X(CUresult, cuMemAllocAsync_ptsz, (CUdeviceptr *p, size_t n, CUstream s)) \
X(CUresult, cuMemAllocFromPoolAsync, (CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)) \
X(CUresult, cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)) \
X(CUresult, cuMemCreate, (CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long flags)) \
X(CUresult, cuArrayCreate_v2, (CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d)) \
X(CUresult, cuArray3DCreate_v2, (CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d)) \
X(CUresult, cuMipmappedArrayCreate, (CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels)) \
X(CUresult, cuMemFree_v2, (CUdeviceptr p)) \
X(CUresult, cuMemFreeAsync, (CUdeviceptr p, CUstream s)) \
X(CUresult, cuMemFreeAsync_ptsz, (CUdeviceptr p, CUstream s)) \
X(CUresult, cuMemRelease, (CUmemGenericAllocationHandle h)) \
X(CUresult, cuArrayDestroy, (CUarray a)) \
X(CUresult, cuMipmappedArrayDestroy, (CUmipmappedArray a)) \
X(CUresult, cuMemGetInfo_v2, (size_t *free_b, size_t *total_b)) \
X(CUresult, cuMemHostAlloc, (void **p, size_t n, unsigned int flags)) \
X(CUresult, cuMemFreeHost, (void *p)) \
X(CUresult, cuModuleGetFunction, (CUfunction *f, CUmodule m, const char *name)) \
X(CUresult, cuLaunchKernel, (CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm, CUstream s, void **params, void **extra)) \
X(CUresult, cuLaunchKernel_ptsz, (CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm, CUstream s, void **params, void **extra)) \
X(CUresult, cuLaunchKernelEx, (const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra)) \
X(CUresult, cuLaunchKernelEx_ptsz, (const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra)) \
X(CUresult, cuLaunchCooperativeKernel, (CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm, CUstream s, void **params)) \
X(CUresult, cuLaunchCooperativeKernel_ptsz, (CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm, CUstream s, void **params)) \
X(CUresult, cuGraphLaunch, (CUgraphExec g, CUstream s)) \
X(CUresult, cuGraphLaunch_ptsz, (CUgraphExec g, CUstream s)) \
X(CUresult, cuStreamCreate, (CUstream *s, unsigned int flags)) \
X(CUresult, cuStreamDestroy_v2, (CUstream s)) \
X(CUresult, cuStreamSynchronize, (CUstream s)) \
X(CUresult, cuStreamIsCapturing, (CUstream s, int *status)) \
X(CUresult, cuEventCreate, (CUevent *e, unsigned int flags)) \
X(CUresult, cuEventDestroy_v2, (CUevent e)) \
X(CUresult, cuEventRecord, (CUevent e, CUstream s)) \
X(CUresult, cuEventQuery, (CUevent e)) \
X(CUresult, cuEventSynchronize, (CUevent e)) \
X(CUresult, cuEventElapsedTime, (float *ms, CUevent a, CUevent b))

/* Memory management beyond allocation: pools, virtual memory mappings,
 * array sizes, contexts and modules (what takes device memory). */
#define VGPU_CUDA_MEM_PROTOS(X) \
X(CUresult, cuDeviceGetDefaultMemPool, (CUmemoryPool *pool, CUdevice d)) \
X(CUresult, cuDeviceGetMemPool, (CUmemoryPool *pool, CUdevice d)) \
X(CUresult, cuDeviceSetMemPool, (CUdevice d, CUmemoryPool pool)) \
X(CUresult, cuMemPoolCreate, (CUmemoryPool *pool, const CUmemPoolProps *props)) \
X(CUresult, cuMemPoolDestroy, (CUmemoryPool pool)) \
X(CUresult, cuMemPoolGetAttribute, (CUmemoryPool pool, CUmemPool_attribute attr, void *value)) \
X(CUresult, cuMemPoolSetAttribute, (CUmemoryPool pool, CUmemPool_attribute attr, void *value)) \
X(CUresult, cuMemPoolTrimTo, (CUmemoryPool pool, size_t minBytesToKeep)) \
X(CUresult, cuMemAddressReserve, (CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags)) \
X(CUresult, cuMemAddressFree, (CUdeviceptr p, size_t size)) \
X(CUresult, cuMemMap, (CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle h, unsigned long long flags)) \
X(CUresult, cuMemUnmap, (CUdeviceptr p, size_t size)) \
X(CUresult, cuArrayGetMemoryRequirements, (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray a, CUdevice d)) \
X(CUresult, cuMipmappedArrayGetMemoryRequirements, (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUmipmappedArray a, CUdevice d)) \
X(CUresult, cuModuleLoad, (CUmodule *m, const char *fname)) \
X(CUresult, cuModuleLoadData, (CUmodule *m, const void *image)) \
X(CUresult, cuModuleLoadDataEx, (CUmodule *m, const void *image, unsigned int nopts, CUjit_option *opts, void **vals)) \
X(CUresult, cuModuleLoadFatBinary, (CUmodule *m, const void *fatbin)) \
X(CUresult, cuModuleUnload, (CUmodule m)) \
X(CUresult, cuLibraryLoadData, (CUlibrary *l, const void *code, CUjit_option *jopts, void **jvals, unsigned int njopts, \
                                CUlibraryOption *lopts, void **lvals, unsigned int nlopts)) \
X(CUresult, cuLibraryLoadFromFile, (CUlibrary *l, const char *fname, CUjit_option *jopts, void **jvals, unsigned int njopts, \
                                    CUlibraryOption *lopts, void **lvals, unsigned int nlopts)) \
X(CUresult, cuLibraryUnload, (CUlibrary l))

/* Handle lifetimes, stream capture and graphs (the compute limiter's side). */
#define VGPU_CUDA_EXEC_PROTOS(X) \
X(CUresult, cuCtxDestroy, (CUcontext c)) \
X(CUresult, cuStreamDestroy, (CUstream s)) \
X(CUresult, cuStreamQuery, (CUstream s)) \
X(CUresult, cuDevicePrimaryCtxRelease, (CUdevice d)) \
X(CUresult, cuDevicePrimaryCtxReset, (CUdevice d)) \
X(CUresult, cuDevicePrimaryCtxReset_v2, (CUdevice d)) \
X(CUresult, cuDevicePrimaryCtxGetState, (CUdevice d, unsigned int *flags, int *active)) \
X(CUresult, cuStreamBeginCapture, (CUstream s)) \
X(CUresult, cuStreamBeginCapture_v2, (CUstream s, int mode)) \
X(CUresult, cuStreamBeginCapture_ptsz, (CUstream s)) \
X(CUresult, cuStreamBeginCapture_v2_ptsz, (CUstream s, int mode)) \
X(CUresult, cuStreamEndCapture, (CUstream s, CUgraph *g)) \
X(CUresult, cuThreadExchangeStreamCaptureMode, (int *mode)) \
X(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec *e, CUgraph g, unsigned long long flags)) \
X(CUresult, cuGraphExecDestroy, (CUgraphExec e)) \
X(CUresult, cuGraphDestroy, (CUgraph g)) \
X(CUresult, cuDeviceGraphMemTrim, (CUdevice d))

#define VGPU_DECLARE_PROTO(ret, name, args) ret name args;
#pragma GCC visibility push(default)
VGPU_CUDA_PROTOS(VGPU_DECLARE_PROTO)
VGPU_CUDA_EXEC_PROTOS(VGPU_DECLARE_PROTO)
VGPU_CUDA_MEM_PROTOS(VGPU_DECLARE_PROTO)
#pragma GCC visibility pop

#endif
