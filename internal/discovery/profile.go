package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/api/resource"
)

// MaxSimulatedGPUs bounds a profile. Real nodes carry at most 16 GPUs; the
// bound only stops a typo ("800xL4") from producing a giant inventory.
const MaxSimulatedGPUs = 64

// Defaults for a profile that does not name driver versions: a current
// data-centre driver and the CUDA version it supports.
const (
	DefaultSimulatedDriverVersion     = "580.82.07"
	DefaultSimulatedCUDADriverVersion = "13.0"
)

// Profile describes a simulated node. It is written as YAML:
//
//	driverVersion: "580.82.07"    # optional
//	cudaDriverVersion: "13.0"     # optional
//	gpus:
//	- model: H100-80GB            # a known model, see KnownModelNames
//	  count: 4                    # optional, default 1
//	- productName: NVIDIA RTX 6000 Ada Generation   # or a model of your own
//	  memory: 49140Mi
//	  architecture: ada
//	  cudaComputeCapability: "8.9"
//	  migEnabled: false           # optional
//
// or inline, as "4xH100-80GB,2xL4" or "8x NVIDIA A100-SXM4-80GB".
type Profile struct {
	DriverVersion     string       `yaml:"driverVersion"`
	CUDADriverVersion string       `yaml:"cudaDriverVersion"`
	GPUs              []ProfileGPU `yaml:"gpus"`
}

// ProfileGPU is one group of identical GPUs in a Profile.
type ProfileGPU struct {
	// Model is a known model (short name, alias or NVML product name); the
	// fields below override its values. Without Model, ProductName and
	// Memory are required.
	Model string `yaml:"model"`
	// Count is the number of such GPUs; default 1.
	Count                 *int   `yaml:"count"`
	ProductName           string `yaml:"productName"`
	Brand                 string `yaml:"brand"`
	Architecture          string `yaml:"architecture"`
	CUDAComputeCapability string `yaml:"cudaComputeCapability"`
	// Memory is a Kubernetes quantity ("80Gi", "81559Mi") or a byte count.
	Memory string `yaml:"memory"`
	// ReservedMemory is what the simulated driver keeps for itself (NVML's
	// reserved memory), a quantity like Memory; default 0.
	ReservedMemory string `yaml:"reservedMemory"`
	MIGEnabled     bool   `yaml:"migEnabled"`
}

// SimulatedGPU is one resolved GPU of a profile, before the node gives it
// identity (UUID, PCI address).
type SimulatedGPU struct {
	Model
	ReservedMemoryBytes uint64
	MIGEnabled          bool
}

var (
	versionPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}$`)
	// inlineItem is "[N x] MODEL", e.g. "8xH100-80GB", "2 x L4", "T4".
	inlineItem = regexp.MustCompile(`^(?:([0-9]+)\s*[xX]\s*)?(\S.*)$`)
)

// LoadProfile reads a profile given on the command line: a path (anything
// with a "/" or ending in .yaml/.yml) is read as a YAML file, anything else
// is an inline profile. The rule is syntactic so that a file named "L4" in
// the working directory cannot change what "--simulate L4" means.
func LoadProfile(spec string) (Profile, error) {
	spec = strings.TrimSpace(spec)
	if strings.Contains(spec, "/") || strings.HasSuffix(spec, ".yaml") || strings.HasSuffix(spec, ".yml") {
		data, err := os.ReadFile(spec)
		if err != nil {
			return Profile{}, fmt.Errorf("read profile: %w", err)
		}
		p, err := ParseProfile(data)
		if err != nil {
			return Profile{}, fmt.Errorf("profile %s: %w", spec, err)
		}
		return p, nil
	}
	return ParseInlineProfile(spec)
}

// ParseInlineProfile parses "4xH100-80GB,2xL4" or "8x NVIDIA A100-SXM4-80GB".
func ParseInlineProfile(spec string) (Profile, error) {
	var p Profile
	if strings.TrimSpace(spec) == "" {
		return Profile{}, errors.New("inline profile is empty; want e.g. 4xH100-80GB,2xL4")
	}
	for i, item := range strings.Split(spec, ",") {
		m := inlineItem.FindStringSubmatch(strings.TrimSpace(item))
		if m == nil {
			return Profile{}, fmt.Errorf("inline profile item %d %q: want [N x] MODEL, e.g. 4xH100-80GB", i+1, item)
		}
		g := ProfileGPU{Model: strings.TrimSpace(m[2])}
		if m[1] != "" {
			n, err := strconv.Atoi(m[1])
			if err != nil {
				return Profile{}, fmt.Errorf("inline profile item %d %q: count: %w", i+1, item, err)
			}
			g.Count = &n
		}
		p.GPUs = append(p.GPUs, g)
	}
	if _, err := p.Resolve(); err != nil {
		return Profile{}, fmt.Errorf("inline profile %q: %w", spec, err)
	}
	return p, nil
}

// ParseProfile decodes a YAML profile strictly: unknown fields, duplicate
// keys, wrong types and trailing documents are errors that name the line.
// A document that is a plain string is read as an inline profile, so a file
// holding just "8x NVIDIA A100-SXM4-80GB" works too.
func ParseProfile(data []byte) (Profile, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Profile{}, fmt.Errorf("parse profile: %w", oneLineError{err})
	}
	if root.Kind == 0 {
		return Profile{}, errors.New("parse profile: empty document")
	}
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 && root.Content[0].Kind == yaml.ScalarNode && root.Content[0].Tag == "!!str" {
		p, err := ParseInlineProfile(root.Content[0].Value)
		if err != nil {
			return Profile{}, fmt.Errorf("line %d: %w", root.Content[0].Line, err)
		}
		return p, nil
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return Profile{}, fmt.Errorf("parse profile: %w", oneLineError{err})
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Profile{}, errors.New("parse profile: more than one YAML document")
	}
	lines, found := gpuLines(&root)
	if !found {
		return Profile{}, errors.New("parse profile: field gpus is required (write gpus: [] for a node without GPUs)")
	}
	if err := p.validate(lines); err != nil {
		return Profile{}, fmt.Errorf("parse profile: %w", err)
	}
	return p, nil
}

// gpuLines finds the line of each entry under "gpus", for error messages
// about values that decode fine but make no sense.
func gpuLines(root *yaml.Node) (lines []int, found bool) {
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, false
	}
	m := root.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != "gpus" || m.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		for _, item := range m.Content[i+1].Content {
			lines = append(lines, item.Line)
		}
		return lines, true
	}
	return nil, false
}

func (p Profile) validate(lines []int) error {
	for name, v := range map[string]string{"driverVersion": p.DriverVersion, "cudaDriverVersion": p.CUDADriverVersion} {
		if v != "" && !versionPattern.MatchString(v) {
			return fmt.Errorf("field %s: %q is not a dotted version like 580.82.07", name, v)
		}
	}
	for i, g := range p.GPUs {
		if _, err := g.resolve(); err != nil {
			where := fmt.Sprintf("gpus[%d]", i)
			if i < len(lines) {
				where = fmt.Sprintf("line %d: %s", lines[i], where)
			}
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	_, err := p.Resolve()
	return err
}

// Resolve expands the profile into one entry per GPU, in profile order.
func (p Profile) Resolve() ([]SimulatedGPU, error) {
	var gpus []SimulatedGPU
	for i, g := range p.GPUs {
		sim, err := g.resolve()
		if err != nil {
			return nil, fmt.Errorf("gpus[%d]: %w", i, err)
		}
		count := 1
		if g.Count != nil {
			count = *g.Count
		}
		if len(gpus)+count > MaxSimulatedGPUs {
			return nil, fmt.Errorf("gpus[%d]: more than %d GPUs in the profile", i, MaxSimulatedGPUs)
		}
		for range count {
			gpus = append(gpus, sim)
		}
	}
	return gpus, nil
}

func (g ProfileGPU) resolve() (SimulatedGPU, error) {
	if g.Count != nil && (*g.Count < 1 || *g.Count > MaxSimulatedGPUs) {
		return SimulatedGPU{}, fmt.Errorf("field count: %d is not between 1 and %d", *g.Count, MaxSimulatedGPUs)
	}
	var m Model
	if g.Model != "" {
		known, ok := LookupModel(g.Model)
		if !ok {
			return SimulatedGPU{}, fmt.Errorf("field model: unknown model %q; known: %s", g.Model, strings.Join(KnownModelNames(), ", "))
		}
		m = known
	} else if g.ProductName == "" || g.Memory == "" {
		return SimulatedGPU{}, errors.New("field model: either model or both productName and memory are required")
	}
	if g.ProductName != "" {
		m.ProductName = g.ProductName
	}
	if g.Brand != "" {
		m.Brand = g.Brand
	}
	if g.Architecture != "" {
		m.Architecture = g.Architecture
	}
	if g.CUDAComputeCapability != "" {
		if !versionPattern.MatchString(g.CUDAComputeCapability) {
			return SimulatedGPU{}, fmt.Errorf("field cudaComputeCapability: %q is not like 9.0", g.CUDAComputeCapability)
		}
		m.CUDAComputeCapability = g.CUDAComputeCapability
	}
	if g.Memory != "" {
		q, err := resource.ParseQuantity(g.Memory)
		if err != nil {
			return SimulatedGPU{}, fmt.Errorf("field memory: %q: %w", g.Memory, err)
		}
		bytes, ok := q.AsInt64()
		// 1 MiB .. 64 TiB: anything outside is a typo, not a GPU.
		if !ok || bytes < mib || bytes > 64<<40 {
			return SimulatedGPU{}, fmt.Errorf("field memory: %q is not between 1Mi and 64Ti", g.Memory)
		}
		m.MemoryBytes = uint64(bytes)
	}
	var reserved uint64
	if g.ReservedMemory != "" {
		q, err := resource.ParseQuantity(g.ReservedMemory)
		if err != nil {
			return SimulatedGPU{}, fmt.Errorf("field reservedMemory: %q: %w", g.ReservedMemory, err)
		}
		bytes, ok := q.AsInt64()
		if !ok || bytes < 0 || uint64(bytes) >= m.MemoryBytes {
			return SimulatedGPU{}, fmt.Errorf("field reservedMemory: %q must be at least 0 and less than the GPU's memory", g.ReservedMemory)
		}
		reserved = uint64(bytes)
	}
	if len(m.ProductName) > 64 || strings.TrimSpace(m.ProductName) == "" {
		return SimulatedGPU{}, fmt.Errorf("field productName: %q must be 1 to 64 characters", m.ProductName)
	}
	if m.Brand == "" {
		m.Brand = "Nvidia"
	}
	if m.Architecture == "" {
		m.Architecture = "unknown"
	}
	return SimulatedGPU{Model: m, ReservedMemoryBytes: reserved, MIGEnabled: g.MIGEnabled}, nil
}

// oneLineError keeps YAML's multi-line error lists ("unmarshal errors:\n
// line 3: ...") on one line, so that a bad profile is one log line.
type oneLineError struct{ err error }

func (e oneLineError) Error() string {
	lines := strings.Split(e.err.Error(), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " ")
}

func (e oneLineError) Unwrap() error { return e.err }
