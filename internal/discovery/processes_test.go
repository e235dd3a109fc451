package discovery

import (
	"context"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

func TestNVMLProcesses(t *testing.T) {
	for _, tc := range []struct {
		name        string
		graphicsRet nvml.Return
		utilRet     nvml.Return
		want        []GPUProcess
		wantSamples int
	}{
		{"compute and graphics merged", nvml.SUCCESS, nvml.SUCCESS,
			[]GPUProcess{{10, 1 << 30}, {11, 0}, {12, 3 << 20}}, 2},
		{"no graphics query", nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_NOT_FOUND,
			[]GPUProcess{{10, 1 << 30}, {11, 0}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := &mock.Device{
				GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
					// 11: memory NVML cannot attribute (NVML_VALUE_NOT_AVAILABLE)
					return []nvml.ProcessInfo{{Pid: 10, UsedGpuMemory: 1 << 30}, {Pid: 11, UsedGpuMemory: ^uint64(0)}}, nvml.SUCCESS
				},
				GetGraphicsRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
					return []nvml.ProcessInfo{{Pid: 10, UsedGpuMemory: 1 << 20}, {Pid: 12, UsedGpuMemory: 3 << 20}}, tc.graphicsRet
				},
				GetProcessUtilizationFunc: func(since uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
					if since != 77 {
						t.Errorf("since %d", since)
					}
					return []nvml.ProcessUtilizationSample{{Pid: 10, TimeStamp: 100, SmUtil: 40}, {Pid: 12, TimeStamp: 100, SmUtil: 5}}, tc.utilRet
				},
			}
			lib := mockNVML(nvml.SUCCESS)
			lib.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
				if uuid != "GPU-x" {
					return nil, nvml.ERROR_NOT_FOUND
				}
				return dev, nvml.SUCCESS
			}
			d, err := OpenNVML(context.Background(), NVMLOptions{Library: lib})
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Processes("GPU-x")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("process %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			samples, err := d.ProcessUtilization("GPU-x", 77)
			if err != nil || len(samples) != tc.wantSamples {
				t.Errorf("samples %+v, %v; want %d", samples, err, tc.wantSamples)
			}
			if _, err := d.Processes("GPU-gone"); err == nil {
				t.Error("a GPU NVML does not know must be an error")
			}
		})
	}
}
