// Package checkpoint persists which ResourceClaims the plugin has prepared,
// so that a restarted plugin can finish or roll back what a crash
// interrupted and can unprepare claims the kubelet no longer knows.
//
// Format: one JSON file, written atomically (temp file, fsync, rename,
// fsync of the directory). It carries Version (the writer's format) and
// MinReaderVersion (the oldest reader that interprets it correctly).
// Readers decode leniently (unknown fields are ignored), so a newer plugin
// reads an older file and an older plugin reads a newer one as long as
// MinReaderVersion allows it; a writer bumps MinReaderVersion only when a
// change would make older readers act wrongly.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hami-dra/hami-dra/internal/atomicfile"
)

const (
	// Version is the format this code writes.
	Version = 1
	// MinReaderVersion is the oldest reader that understands Version.
	MinReaderVersion = 1
)

// State is how far a claim got.
type State string

const (
	// PrepareStarted: files may exist partially; recovery rolls back.
	PrepareStarted State = "PrepareStarted"
	// PrepareCompleted: the CDI spec and claim directory are in place.
	PrepareCompleted State = "PrepareCompleted"
	// UnprepareStarted: recovery completes the unprepare.
	UnprepareStarted State = "UnprepareStarted"
)

// Device is one GPU share of a prepared claim.
type Device struct {
	Request    string `json:"request"`
	Pool       string `json:"pool"`
	DeviceName string `json:"deviceName"`
	ShareID    string `json:"shareID,omitempty"`
}

// GPUQuota is the quota of a claim on one GPU, in quota-index order.
type GPUQuota struct {
	UUID        string `json:"uuid"`
	PCIBusID    string `json:"pciBusID,omitempty"`
	Minor       int    `json:"minor"`
	MemoryBytes int64  `json:"memoryBytes"`
	Cores       int64  `json:"cores"`
}

// Claim is the record of one claim.
type Claim struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	State     State      `json:"state"`
	Devices   []Device   `json:"devices,omitempty"`
	GPUs      []GPUQuota `json:"gpus,omitempty"`
	// CDIDeviceIDs are the IDs returned to the kubelet, per Devices entry.
	CDIDeviceIDs [][]string `json:"cdiDeviceIDs,omitempty"`
	// Env is the claim's quota environment, kept so that a vanished CDI
	// spec is rebuilt exactly (claims may have been deleted meanwhile).
	Env []string `json:"env,omitempty"`
	// AdminAccess: the claim's GPUs were allocated with adminAccess; they
	// carry no quota and its spec injects no libvgpu.
	AdminAccess bool `json:"adminAccess,omitempty"`
}

// File is the on-disk document.
type File struct {
	Version          int              `json:"version"`
	MinReaderVersion int              `json:"minReaderVersion"`
	BootID           string           `json:"bootID"`
	Claims           map[string]Claim `json:"claims"`
}

// ErrTooNew says the checkpoint was written by a plugin whose format this
// one cannot interpret safely.
var ErrTooNew = errors.New("checkpoint format too new")

// Decode reads a checkpoint of any version this code can interpret.
func Decode(data []byte) (*File, error) {
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode checkpoint: %w", err)
	}
	if f.Version < 1 {
		return nil, fmt.Errorf("decode checkpoint: missing or invalid version %d", f.Version)
	}
	if f.MinReaderVersion > Version {
		return nil, fmt.Errorf("%w: needs a reader of version %d, this is %d", ErrTooNew, f.MinReaderVersion, Version)
	}
	if f.Claims == nil {
		f.Claims = map[string]Claim{}
	}
	return &f, nil
}

// Store is the in-memory checkpoint with group-committed writes: many
// goroutines may Update concurrently; Sync makes their changes durable and
// coalesces concurrent writers into one file write.
type Store struct {
	path string

	mu   sync.Mutex // guards file and gen
	file File
	gen  uint64 // bumped by every Update

	writeMu    sync.Mutex // serialises file writes
	durableGen uint64     // guarded by writeMu
}

// Open loads the checkpoint at path, or starts an empty one. bootID is the
// current boot; PreviousBootID returns the one found in the file.
func Open(path, bootID string) (*Store, string, error) {
	s := &Store{path: path, file: File{Version: Version, MinReaderVersion: MinReaderVersion, BootID: bootID, Claims: map[string]Claim{}}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, bootID, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read checkpoint: %w", err)
	}
	f, err := Decode(data)
	if err != nil {
		return nil, "", err
	}
	prev := f.BootID
	s.file.Claims = f.Claims
	return s, prev, nil
}

// Reload replaces the in-memory claims with the file's. It is used when
// another plugin instance may have written the file (rolling update), under
// the lock that serialises the instances.
func (s *Store) Reload() error {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	f, err := Decode(data)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.file.Claims = f.Claims
	s.gen++
	s.mu.Unlock()
	return nil
}

// Get returns a claim's record.
func (s *Store) Get(uid string) (Claim, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.file.Claims[uid]
	return c, ok
}

// Claims returns a snapshot of all records.
func (s *Store) Claims() map[string]Claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Claim, len(s.file.Claims))
	for k, v := range s.file.Claims {
		out[k] = v
	}
	return out
}

// Put sets a claim's record in memory; call Sync to make it durable.
func (s *Store) Put(uid string, c Claim) {
	s.mu.Lock()
	s.file.Claims[uid] = c
	s.gen++
	s.mu.Unlock()
}

// Delete removes a claim's record in memory; call Sync to make it durable.
func (s *Store) Delete(uid string) {
	s.mu.Lock()
	delete(s.file.Claims, uid)
	s.gen++
	s.mu.Unlock()
}

// Sync returns once every change made before the call is on disk.
func (s *Store) Sync() error {
	s.mu.Lock()
	want := s.gen
	s.mu.Unlock()

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.durableGen >= want && want != 0 {
		return nil // a concurrent writer already wrote our change
	}
	s.mu.Lock()
	gen := s.gen
	data, err := json.MarshalIndent(&s.file, "", "  ")
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if err := atomicfile.WriteFile(s.path, data, 0o600, true); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	s.durableGen = gen
	return nil
}

// ReadBootID reads the kernel's boot ID (/proc/sys/kernel/random/boot_id).
func ReadBootID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
