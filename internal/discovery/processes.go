package discovery

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPUProcess is a process NVML lists on a GPU, by host PID.
type GPUProcess struct {
	PID uint32
	// MemoryBytes is the device memory NVML attributes to the process
	// (its allocations and its CUDA context); 0 when NVML cannot tell.
	MemoryBytes uint64
}

// ProcessSample is one of NVML's per-process utilisation samples.
type ProcessSample struct {
	PID         uint32
	TimestampUs uint64
	// SMUtil is the percent of the sample period during which the
	// process's kernels ran.
	SMUtil uint32
}

// notAvailable is NVML_VALUE_NOT_AVAILABLE, which usedGpuMemory holds when
// the driver cannot attribute memory (e.g. without permission).
const notAvailable = ^uint64(0)

// Processes lists the compute and graphics processes on the GPU with this
// UUID; a process in both lists appears once.
func (d *NVMLDiscoverer) Processes(uuid string) ([]GPUProcess, error) {
	dev, ret := d.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %s: %w", uuid, ret)
	}
	compute, ret := dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("compute processes of GPU %s: %w", uuid, ret)
	}
	// Graphics processes (an OpenGL/Vulkan client) hold memory too; a GPU
	// or driver without the query leaves them out.
	graphics, ret := dev.GetGraphicsRunningProcesses()
	if errors.Is(ret, nvml.ERROR_NOT_SUPPORTED) {
		graphics = nil
	} else if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("graphics processes of GPU %s: %w", uuid, ret)
	}
	seen := map[uint32]int{}
	var out []GPUProcess
	for _, p := range append(compute, graphics...) {
		mem := p.UsedGpuMemory
		if mem == notAvailable {
			mem = 0
		}
		if i, ok := seen[p.Pid]; ok {
			out[i].MemoryBytes = max(out[i].MemoryBytes, mem)
			continue
		}
		seen[p.Pid] = len(out)
		out = append(out, GPUProcess{PID: p.Pid, MemoryBytes: mem})
	}
	return out, nil
}

// ProcessUtilization returns the GPU's per-process utilisation samples
// newer than sinceUs (NVML's time stamps, microseconds). No sample since
// then is not an error.
func (d *NVMLDiscoverer) ProcessUtilization(uuid string, sinceUs uint64) ([]ProcessSample, error) {
	dev, ret := d.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %s: %w", uuid, ret)
	}
	samples, ret := dev.GetProcessUtilization(sinceUs)
	if errors.Is(ret, nvml.ERROR_NOT_FOUND) {
		return nil, nil
	}
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("process utilisation of GPU %s: %w", uuid, ret)
	}
	out := make([]ProcessSample, len(samples))
	for i, s := range samples {
		out[i] = ProcessSample{PID: s.Pid, TimestampUs: s.TimeStamp, SMUtil: s.SmUtil}
	}
	return out, nil
}
