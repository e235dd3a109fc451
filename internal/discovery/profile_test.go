package discovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseProfile(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// wantProducts lists the resolved GPUs' product names; nil with wantErr.
		wantProducts []string
		wantMemory   []uint64
		wantReserved []uint64
		// wantErr lists substrings the error must contain (line, field).
		wantErr []string
	}{
		{
			name:         "known models with counts",
			yaml:         "driverVersion: \"570.124.06\"\ngpus:\n- model: H100-80GB\n  count: 2\n- model: l4\n",
			wantProducts: []string{"NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA L4"},
			wantMemory:   []uint64{81559 * mib, 81559 * mib, 23034 * mib},
		},
		{
			name:         "a model of one's own",
			yaml:         "gpus:\n- productName: NVIDIA RTX 6000 Ada Generation\n  memory: 49140Mi\n  architecture: ada\n  cudaComputeCapability: \"8.9\"\n",
			wantProducts: []string{"NVIDIA RTX 6000 Ada Generation"},
			wantMemory:   []uint64{49140 * mib},
		},
		{
			name:         "overriding a known model's memory",
			yaml:         "gpus:\n- model: A100-40GB\n  memory: \"42949672960\"\n",
			wantProducts: []string{"NVIDIA A100-SXM4-40GB"},
			wantMemory:   []uint64{40960 * mib},
		},
		{
			name:         "the driver's reserved memory",
			yaml:         "gpus:\n- model: H100-80GB\n  reservedMemory: 527Mi\n- model: L4\n",
			wantProducts: []string{"NVIDIA H100 80GB HBM3", "NVIDIA L4"},
			wantMemory:   []uint64{81559 * mib, 23034 * mib},
			wantReserved: []uint64{527 * mib, 0},
		},
		{
			name:         "a file holding an inline profile",
			yaml:         "8x NVIDIA A100-SXM4-80GB\n",
			wantProducts: []string{"NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"},
		},
		{
			name:         "a node without GPUs",
			yaml:         "gpus: []\n",
			wantProducts: []string{},
		},
		{name: "unknown field names its line", yaml: "gpus:\n- model: L4\n  colour: green\n", wantErr: []string{"line 3", "colour"}},
		{name: "unknown top-level field", yaml: "gpu:\n- model: L4\n", wantErr: []string{"line 1", "gpu"}},
		{name: "unknown model names its line", yaml: "gpus:\n- model: L4\n- model: X100\n", wantErr: []string{"line 3", "gpus[1]", "X100"}},
		{name: "wrong type", yaml: "gpus:\n- model: L4\n  count: many\n", wantErr: []string{"line 3", "many"}},
		{name: "zero count", yaml: "gpus:\n- model: L4\n  count: 0\n", wantErr: []string{"line 2", "count"}},
		{name: "too many GPUs", yaml: "gpus:\n- model: L4\n  count: 40\n- model: T4\n  count: 40\n", wantErr: []string{"more than 64"}},
		{name: "bad memory", yaml: "gpus:\n- model: L4\n  memory: lots\n", wantErr: []string{"line 2", "memory"}},
		{name: "tiny memory", yaml: "gpus:\n- model: L4\n  memory: 1Ki\n", wantErr: []string{"memory", "1Mi"}},
		{name: "reserved memory not a quantity", yaml: "gpus:\n- model: L4\n  reservedMemory: some\n", wantErr: []string{"line 2", "reservedMemory"}},
		{name: "reserved memory beyond the GPU's", yaml: "gpus:\n- model: L4\n  reservedMemory: 24Gi\n", wantErr: []string{"reservedMemory", "less than"}},
		{name: "own model without memory", yaml: "gpus:\n- productName: Mystery GPU\n", wantErr: []string{"line 2", "productName and memory"}},
		{name: "bad driver version", yaml: "driverVersion: r580\ngpus: []\n", wantErr: []string{"driverVersion", "r580"}},
		{name: "bad compute capability", yaml: "gpus:\n- model: L4\n  cudaComputeCapability: nine\n", wantErr: []string{"cudaComputeCapability"}},
		{name: "duplicate key", yaml: "gpus: []\ngpus: []\n", wantErr: []string{"line 2", "gpus"}},
		{name: "missing gpus", yaml: "driverVersion: \"580.82.07\"\n", wantErr: []string{"gpus is required"}},
		{name: "two documents", yaml: "gpus: []\n---\ngpus: []\n", wantErr: []string{"more than one"}},
		{name: "empty file", yaml: "", wantErr: []string{"empty"}},
		{name: "not YAML", yaml: "gpus: [\n", wantErr: []string{"line"}},
		{name: "a list instead of a mapping", yaml: "- model: L4\n", wantErr: []string{"line 1"}},
		{name: "an inline profile with a bad model", yaml: "\n4x X100\n", wantErr: []string{"line 2", "X100"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseProfile([]byte(tc.yaml))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; profile %+v", p)
				}
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProfile: %v", err)
			}
			gpus, err := p.Resolve()
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if len(gpus) != len(tc.wantProducts) {
				t.Fatalf("got %d GPUs, want %d", len(gpus), len(tc.wantProducts))
			}
			for i, g := range gpus {
				if g.ProductName != tc.wantProducts[i] {
					t.Errorf("GPU %d: product %q, want %q", i, g.ProductName, tc.wantProducts[i])
				}
				if tc.wantMemory != nil && g.MemoryBytes != tc.wantMemory[i] {
					t.Errorf("GPU %d: memory %d, want %d", i, g.MemoryBytes, tc.wantMemory[i])
				}
				if tc.wantReserved != nil && g.ReservedMemoryBytes != tc.wantReserved[i] {
					t.Errorf("GPU %d: reserved memory %d, want %d", i, g.ReservedMemoryBytes, tc.wantReserved[i])
				}
			}
		})
	}
}

func TestParseInlineProfile(t *testing.T) {
	tests := []struct {
		spec    string
		want    []string // product names
		wantErr string
	}{
		{spec: "8xH100-80GB", want: repeat("NVIDIA H100 80GB HBM3", 8)},
		{spec: "4xA100-80GB,2xL4", want: append(repeat("NVIDIA A100-SXM4-80GB", 4), repeat("NVIDIA L4", 2)...)},
		{spec: "2 x a100-pcie-40gb, T4", want: []string{"NVIDIA A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB", "Tesla T4"}},
		{spec: "4x NVIDIA H100 80GB HBM3", want: repeat("NVIDIA H100 80GB HBM3", 4)},
		{spec: "1xA100-PCIE-80GB,1xA100-SXM4-40GB", want: []string{"NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-40GB"}},
		{spec: "", wantErr: "empty"},
		{spec: "4xH200", wantErr: "unknown model"},
		{spec: "0xL4", wantErr: "count"},
		{spec: "65xL4", wantErr: "count"},
		{spec: "99999999999999999999xL4", wantErr: "count"},
		{spec: "4xL4,", wantErr: "item 2"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			p, err := ParseInlineProfile(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gpus, err := p.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, g := range gpus {
				got = append(got, g.ProductName)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoadProfile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(good, []byte("gpus:\n- model: T4\n  count: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("gpus:\n- model: T4\n  bogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file called like a model must not shadow the model.
	t.Chdir(dir)
	if err := os.WriteFile("L4", []byte("gpus: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		spec      string
		wantCount int
		wantErr   string
	}{
		{spec: good, wantCount: 2},
		{spec: "L4", wantCount: 1},
		{spec: bad, wantErr: "line 3"},
		{spec: filepath.Join(dir, "missing.yaml"), wantErr: "no such file"},
		{spec: "missing.yml", wantErr: "no such file"},
	}
	for _, tc := range tests {
		p, err := LoadProfile(tc.spec)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("LoadProfile(%q): error %v, want one mentioning %q", tc.spec, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("LoadProfile(%q): %v", tc.spec, err)
			continue
		}
		gpus, _ := p.Resolve()
		if len(gpus) != tc.wantCount {
			t.Errorf("LoadProfile(%q): %d GPUs, want %d", tc.spec, len(gpus), tc.wantCount)
		}
	}
}

// FuzzParseProfile checks that no input makes the parser panic, and that
// whatever it accepts resolves within bounds. `go test` runs the seeds;
// `go test -fuzz FuzzParseProfile ./internal/discovery` explores further.
func FuzzParseProfile(f *testing.F) {
	seeds := []string{
		"gpus:\n- model: H100-80GB\n  count: 4\n",
		"driverVersion: \"580.82.07\"\ncudaDriverVersion: \"13.0\"\ngpus:\n- model: A100-80GB\n  count: 4\n- model: L4\n  count: 2\n",
		"gpus:\n- productName: X\n  memory: 1Gi\n  migEnabled: true\n",
		"gpus: []\n",
		"8x NVIDIA A100-SXM4-80GB\n",
		"4xA100-80GB,2xL4",
		"gpus:\n- model: L4\n  count: -1\n",
		"gpus:\n- model: L4\n  memory: 1e400\n",
		"gpus: &a [*a]\n",
		"{gpus: [{model: T4, count: 64}]}",
		"",
		"---\n---\n",
		"\x00\xff",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProfile(data)
		if err != nil {
			return
		}
		gpus, err := p.Resolve()
		if err != nil {
			t.Fatalf("accepted profile does not resolve: %v", err)
		}
		if len(gpus) > MaxSimulatedGPUs {
			t.Fatalf("accepted %d GPUs", len(gpus))
		}
		for _, g := range gpus {
			if g.MemoryBytes < mib || g.ProductName == "" {
				t.Fatalf("accepted an impossible GPU %+v", g)
			}
		}
	})
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}
