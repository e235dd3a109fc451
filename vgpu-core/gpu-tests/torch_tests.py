"""PyTorch checks under libvgpu (run by gpu-tests/run.sh on a GPU machine).

  meminfo <quota_bytes>   mem_get_info reports the quota; allocation past it raises OOM
  train <steps>           ms per training step (run with and without the preload)
  work <seconds> [rate]   saturating matmul loop; prints completed iterations/s and,
                          given the solo rate, the share of the GPU it got
  graph <seconds> [rate]  torch.cuda.graph capture (global mode) while a second thread
                          launches; then replays the graph for <seconds>: its share
  churn <seconds>         CuPy (or, without CuPy, PyTorch) streams and CuPy contexts
                          created and destroyed in a loop while launching
"""
import sys
import threading
import time

import torch


def meminfo(quota):
    free, total = torch.cuda.mem_get_info()
    print(f"torch mem_get_info: free {free >> 20} MiB total {total >> 20} MiB (quota {quota >> 20} MiB)")
    ok_total = total == quota
    blocks = []
    raised = False
    try:
        for _ in range(4 * (quota >> 28) + 64):
            blocks.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError:
        raised = True
    got = len(blocks) * 256
    reserved = torch.cuda.memory_reserved()
    print(f"allocated {got} MiB in 256 MiB tensors before OOM; reserved {reserved >> 20} MiB; OOM raised: {raised}")
    ok = ok_total and raised and reserved <= quota
    print("RESULT meminfo", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def train(steps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(),
        torch.nn.Linear(64 * 64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 3, 64, 64, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / steps
    print(f"RESULT train_ms_per_step {ms:.3f}")
    return 0


def work(seconds, solo_rate):
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            torch.matmul(a, b)
        n += 8
        if n % 256 == 0:
            torch.cuda.synchronize()  # keep the queue bounded, not after each launch
    torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    share = f" share {100 * rate / solo_rate:.1f}%" if solo_rate else ""
    print(f"RESULT torch_work {rate:.1f} matmul/s{share}")
    return 0


def graph(seconds, solo_rate):
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    b = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    stop = threading.Event()

    def neighbour():  # launches under the limit while the capture is open
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            while not stop.is_set():
                torch.matmul(a, b)
                time.sleep(0)

    t = threading.Thread(target=neighbour)
    t.start()
    time.sleep(0.2)
    g = torch.cuda.CUDAGraph()
    ok = True
    try:
        with torch.cuda.graph(g):  # capture_error_mode="global", the default
            for _ in range(8):
                c = torch.matmul(a, b)
    except RuntimeError as e:
        print(f"capture failed: {e}")
        ok = False
    stop.set()
    t.join()
    print("RESULT graph_capture", "PASS" if ok else "FAIL")
    if not ok:
        return 1
    torch.cuda.synchronize()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() < t0 + seconds:
        g.replay()
        n += 8
        if n % 256 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    share = f" share {100 * rate / solo_rate:.1f}%" if solo_rate else ""
    print(f"RESULT torch_graph {rate:.1f} matmul/s{share}")
    del c
    return 0


def churn(seconds):
    try:
        import cupy
    except ImportError:
        cupy = None
    rounds = 0
    t0 = time.perf_counter()
    x = torch.randn(1024, 1024, device="cuda")
    while time.perf_counter() < t0 + seconds:
        if cupy is not None:
            with cupy.cuda.Device(0):
                s = cupy.cuda.Stream(non_blocking=True)
                with s:
                    y = cupy.random.rand(1024, 1024, dtype=cupy.float32)
                    for _ in range(20):
                        y = y @ y
                s.synchronize()
                del s
        else:
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                for _ in range(20):
                    x = torch.tanh(x @ x)
            s.synchronize()
            del s
        rounds += 1
    torch.cuda.synchronize()
    print(f"RESULT churn {rounds} rounds in {seconds:.0f} s ({'cupy' if cupy else 'torch'} streams)")
    print("RESULT churn PASS")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "meminfo":
        sys.exit(meminfo(int(sys.argv[2])))
    if cmd == "train":
        sys.exit(train(int(sys.argv[2])))
    if cmd == "graph":
        sys.exit(graph(float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
    if cmd == "churn":
        sys.exit(churn(float(sys.argv[2])))
    if cmd == "work":
        sys.exit(work(float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
    sys.exit(2)
