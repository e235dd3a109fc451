/* Simulated GPUs shared by the fake libcuda and libnvidia-ml: devices are
 * configured by environment, physical memory and the execution timeline live
 * in a small shared file so several processes see one machine.
 *   FAKE_GPU_COUNT   number of devices (default 1)
 *   FAKE_GPU_MEM     memory per device, comma list, unit suffix k/m/g (default 16g)
 *   FAKE_GPU_UUIDS   comma list of UUIDs (default GPU-fa4e0000-0000-0000-0000-0000000000<i>)
 *   FAKE_GPU_STATE   path of the shared state file (default /tmp/fakegpu-<uid>.state)
 *   FAKE_GPU_DEV_<minor>=<pci bus id>,<uuid>,<memory>,<name>
 *                    one variable per GPU the process can see, as a node's
 *                    device nodes would tell the real driver (the local
 *                    cluster's stand-in for the NVIDIA Container Toolkit's
 *                    CDI spec sets one per injected GPU). When any is set,
 *                    they replace FAKE_GPU_COUNT/MEM/UUIDS: devices are
 *                    enumerated in PCI bus order, and GPU <minor> keeps its
 *                    physical memory and timeline in state slot <minor>, so
 *                    processes that see different subsets of a node's GPUs
 *                    share one simulated machine.
 *   FAKE_KERNEL_NS   duration of kernels that do not say (default 0: no timeline work)
 *   FAKE_WORK_TAG    0..7: tags this process's kernels in the work trace */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H
#include <stdint.h>

#define FG_MAX_DEV 8
#define FG_TRACE_LEN (1u << 17)
#define FG_MAGIC 0x46414b45u

struct fg_trace { uint64_t start, end; uint32_t tag, dev; };

struct fg_dev_state {
    uint64_t phys_used;   /* bytes allocated by every process */
    uint64_t peak_used;   /* high-water mark of phys_used */
    uint64_t tail_ns;     /* the device is busy until this CLOCK_MONOTONIC time */
    uint64_t busy_ns[8];  /* kernel time per work tag */
    uint64_t launches;
};

struct fg_state {
    uint32_t magic, ndev;
    struct fg_dev_state dev[FG_MAX_DEV];
    uint64_t trace_next;
    struct fg_trace trace[FG_TRACE_LEN];
};

struct fg_dev_cfg {
    uint64_t mem;
    char uuid[96];
    char pci[32];
    char name[96];
    int slot; /* index into fg_state.dev */
};
struct fg_config {
    int ndev;
    struct fg_dev_cfg dev[FG_MAX_DEV];
    int nvis;             /* CUDA ordinals after CUDA_VISIBLE_DEVICES */
    int vis[FG_MAX_DEV];  /* ordinal -> host index */
    uint64_t kernel_ns;
    int tag;
};

extern struct fg_config fg;
void fg_init(void);
struct fg_state *fg_state(void);
/* The shared state of host device dev (its slot). */
struct fg_dev_state *fg_dev(int dev);
uint64_t fg_now(void);
void fg_sleep_until(uint64_t t);
int fg_phys_alloc(int dev, uint64_t bytes);   /* 0 ok, -1 out of memory */
void fg_phys_free(int dev, uint64_t bytes);
/* Put dur ns of work on the device timeline after not_before; returns its end. */
uint64_t fg_run(int dev, uint64_t not_before, uint64_t dur);
uint64_t fg_parse_size(const char *s);
#endif
