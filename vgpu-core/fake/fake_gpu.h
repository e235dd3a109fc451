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
 *   FAKE_WORK_TAG    0..7: tags this process's kernels in the work trace
 *   FAKE_GPU_SCHED   how the engine shares the GPU between contexts (every
 *                    process of a test must use the same):
 *                    launch     (default) one timeline in submission order:
 *                               a kernel starts when every kernel submitted
 *                               before it, by any process, has run
 *                    alternate  contexts with queued work take turns one
 *                               kernel at a time, whenever it was submitted
 *                    slice:<ms> time slices: a context runs its queued work
 *                               for up to <ms> (fractions allowed), then the
 *                               next context with queued work gets the GPU;
 *                               a kernel still running is preempted and
 *                               resumes in its context's next slice
 *                    In alternate and slice the streams of one context run
 *                    concurrently (launch keeps the original single
 *                    timeline); in every model an event completes when its
 *                    stream reaches it (everything before it on the stream
 *                    has run and, in alternate/slice, its context holds the
 *                    GPU), and a context with no queued work yields at once.
 *   FAKE_NVML_SAMPLE_US  NVML's per-process sample period (default 166667) */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H
#include <stdint.h>

#define FG_MAX_DEV 8
#define FG_TRACE_LEN (1u << 17)
#define FG_MAGIC 0x46414b45u

/* Busy time of one context: [start, end) on device dev, by the process whose
 * host-style PID is pid (what NVML reports). */
struct fg_trace { uint64_t start, end; uint32_t tag, dev, pid, lane; };

struct fg_dev_state {
    uint64_t phys_used;   /* bytes allocated by every process */
    uint64_t peak_used;   /* high-water mark of phys_used */
    uint64_t tail_ns;     /* the device is busy until this CLOCK_MONOTONIC time */
    uint64_t busy_ns[8];  /* kernel time per work tag */
    uint64_t launches;
};

/* Execution engine: each stream of each process is a lane, a FIFO of work
 * items (kernels, and zero-length markers for events) in the shared state. */
#define FG_MAX_LANES 256
#define FG_LANE_RING 512   /* items kept per lane, done ones included */
#define FG_LANE_DEPTH 128  /* queued items before a submission blocks (a full push buffer) */
#define FG_MAX_PROCS 64
struct fg_item { uint64_t dur, left, done; };
struct fg_lane {
    uint32_t in_use, dev, closing, tag;
    int32_t pid;            /* owner, in its own PID namespace */
    uint32_t pidns;         /* that namespace (fg_pidns) */
    uint32_t hostpid;       /* owner as the driver (NVML) names it */
    uint32_t pad;
    uint64_t ctx;           /* context key: lanes of one context run concurrently */
    uint64_t gen;           /* bumped each time the lane is opened */
    uint64_t head, tail;    /* items [head, tail) are pending */
    uint64_t last_done;     /* launch model: completion of the newest item */
    uint64_t alive_at;      /* when the owner was last seen alive */
    struct fg_item q[FG_LANE_RING];
};
struct fg_engine {          /* per device, alternate and slice models */
    uint32_t lock;          /* spin lock: holder's pid, 0 = free */
    uint32_t rr;            /* round-robin position over lanes */
    uint64_t sim_t;         /* the engine has been simulated up to here */
    uint64_t cur_ctx;       /* context holding the GPU, 0 = none */
    uint64_t slice_start;
};
/* A process is named by its PID in its own PID namespace and that
 * namespace: processes of different containers may have the same PID. */
struct fg_proc { int32_t pid; uint32_t pidns; uint32_t hostpid; uint32_t pad; uint64_t used[FG_MAX_DEV]; };

struct fg_state {
    uint32_t magic, ndev;
    struct fg_dev_state dev[FG_MAX_DEV];
    uint64_t trace_next;
    struct fg_trace trace[FG_TRACE_LEN];
    uint32_t ready;         /* 0 new, 1 initialising, 2 ready */
    uint32_t hostpid_base;  /* host-style PID = own PID + this (random per machine state) */
    uint64_t ctx_next;
    struct fg_engine eng[FG_MAX_DEV];
    struct fg_proc proc[FG_MAX_PROCS];
    struct fg_lane lane[FG_MAX_LANES];
};

enum { FG_SCHED_LAUNCH = 0, FG_SCHED_ALTERNATE = 1, FG_SCHED_SLICE = 2 };

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
    int sched;            /* FG_SCHED_* */
    uint64_t slice_ns;
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
/* Put dur ns of work on the device timeline after not_before; returns its end
 * (launch model only). */
uint64_t fg_run(int dev, uint64_t not_before, uint64_t dur);

/* The engine, in every model. A lane is one stream of one context on host
 * device dev; ctx is a key from fg_ctx_key(). Submitting blocks while the
 * lane holds FG_LANE_DEPTH pending items. A marker (dur 0) completes when
 * the lane reaches it. fg_lane_query: 1 and the completion time once item
 * seq is done, 0 while pending; an item too old to be remembered is done at
 * time 0. Stream-ordered work of other kinds (an async free) can be a marker
 * whose completion the caller polls. */
uint64_t fg_ctx_key(void);
int fg_lane_open(int dev, uint64_t ctx);   /* -1: no free lane */
void fg_lane_close(int lane);               /* freed once drained */
uint64_t fg_lane_submit(int lane, uint64_t dur);
int fg_lane_query(int lane, uint64_t seq, uint64_t *done);
void fg_lane_wait(int lane, uint64_t seq);
/* This process's host-style PID (as NVML reports it), and device memory it
 * holds per host device (for NVML's process list). */
uint32_t fg_hostpid(void);
/* The calling process's PID namespace: the inode of /proc/self/ns/pid (0
 * when unknown). The root namespace's is fixed (PROC_PID_INIT_INO). */
#define FG_ROOT_PIDNS 0xEFFFFFFCu
uint32_t fg_pidns(void);
/* Whether process pid of namespace ns lives, as far as the caller can tell
 * (a process of another namespace the caller cannot see counts as alive). */
int fg_alive(int32_t pid, uint32_t ns);
/* The PID NVML reports for a process-table entry, 0 for a dead process. A
 * real driver names processes by their PID in the root namespace; a caller
 * there (the node's plugin) gets exactly that for processes of other
 * namespaces (containers), found in /proc. Otherwise the entry's
 * host-style PID: the process's own PID moved by an offset, which models a
 * container's PIDs differing from the host's when everything runs in one
 * namespace. */
uint32_t fg_nvml_pid(const struct fg_proc *p);
/* fg_nvml_pid for a host-style PID taken from the work trace. */
uint32_t fg_nvml_pid_of_hostpid(uint32_t hostpid);
/* Bring host device dev's engine (and the work trace) up to now. */
void fg_engine_sync(int dev);
struct fg_proc *fg_proc_self(void);
uint64_t fg_parse_size(const char *s);
#endif
