// Package checkpoint persists which ResourceClaims the plugin has prepared,
// so that a restarted plugin can finish or roll back what a crash
// interrupted and can unprepare claims the kubelet no longer knows.
//
// Format: one JSON file, written atomically (temp file, fsync, rename,
// fsync of the directory). It carries Version (the writer's format),
// MinReaderVersion (the oldest reader that interprets it correctly) and,
// from version 2, a checksum over the claims. Readers decode leniently and
// keep fields they do not know (of the file, a claim or a claim's GPU) and
// write them back unchanged, so a newer plugin reads an older file and an
// older plugin reads a newer one, without losing what the newer one
// recorded, as long as MinReaderVersion allows it; a writer bumps
// MinReaderVersion only when a change would make older readers act wrongly,
// and an older reader then refuses the file with ErrTooNew. A file that
// does not parse, is truncated or fails its checksum is ErrCorrupt.
package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hami-dra/hami-dra/internal/atomicfile"
)

const (
	// Version is the format this code writes. 2: checksum.
	Version = 2
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
	// Unknown holds fields of a newer writer, written back unchanged.
	Unknown map[string]json.RawMessage `json:"-"`
}

// UnmarshalJSON keeps unknown fields.
func (g *GPUQuota) UnmarshalJSON(data []byte) error {
	type plain GPUQuota
	unknown, err := unmarshalKeeping(data, (*plain)(g))
	g.Unknown = unknown
	return err
}

// MarshalJSON writes unknown fields back.
func (g GPUQuota) MarshalJSON() ([]byte, error) {
	type plain GPUQuota
	return marshalKeeping(plain(g), g.Unknown)
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
	// MemoryAuditAction is the claim's VgpuConfig memoryAuditAction (Kill
	// or Warn); empty in records of older versions, which audit as Kill.
	MemoryAuditAction string `json:"memoryAuditAction,omitempty"`
	// Unknown holds fields of a newer writer, written back unchanged.
	Unknown map[string]json.RawMessage `json:"-"`
}

// UnmarshalJSON keeps unknown fields.
func (c *Claim) UnmarshalJSON(data []byte) error {
	type plain Claim
	unknown, err := unmarshalKeeping(data, (*plain)(c))
	c.Unknown = unknown
	return err
}

// MarshalJSON writes unknown fields back.
func (c Claim) MarshalJSON() ([]byte, error) {
	type plain Claim
	return marshalKeeping(plain(c), c.Unknown)
}

// File is the checkpoint's content.
type File struct {
	Version          int
	MinReaderVersion int
	BootID           string
	Claims           map[string]Claim
	// Unknown holds top-level fields of a newer writer.
	Unknown map[string]json.RawMessage
}

// onDisk is the document. Claims stays raw: the checksum covers its bytes
// exactly as they are in the file, whoever wrote them.
type onDisk struct {
	Version          int             `json:"version"`
	MinReaderVersion int             `json:"minReaderVersion"`
	BootID           string          `json:"bootID"`
	Claims           json.RawMessage `json:"claims"`
	Checksum         string          `json:"checksum,omitempty"`
}

var (
	// ErrTooNew says the checkpoint was written by a plugin whose format
	// this one cannot interpret safely (a downgrade too far).
	ErrTooNew = errors.New("checkpoint format too new")
	// ErrCorrupt says the checkpoint cannot be trusted: it does not parse,
	// is truncated, or its checksum does not match.
	ErrCorrupt = errors.New("checkpoint corrupt")
)

// checksum covers the header and the claims' bytes as written.
func checksum(version, minReader int, bootID string, claims []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d %d %q\n", version, minReader, bootID)
	h.Write(claims)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// Decode reads a checkpoint of any version this code can interpret.
func Decode(data []byte) (*File, error) {
	var d onDisk
	unknown, err := unmarshalKeeping(data, &d)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if d.Version < 1 {
		return nil, fmt.Errorf("%w: missing or invalid version %d", ErrCorrupt, d.Version)
	}
	if d.MinReaderVersion > Version {
		return nil, fmt.Errorf("%w: it was written by a newer plugin and needs a reader of version %d, this plugin reads up to %d; upgrade the plugin again, or remove the checkpoint after unpreparing every claim on the node", ErrTooNew, d.MinReaderVersion, Version)
	}
	// Version 1 had no checksum; from 2 on it is required.
	if d.Version >= 2 || d.Checksum != "" {
		if want := checksum(d.Version, d.MinReaderVersion, d.BootID, d.Claims); d.Checksum != want {
			return nil, fmt.Errorf("%w: checksum %q does not match the content (%s)", ErrCorrupt, d.Checksum, want)
		}
	}
	f := &File{Version: d.Version, MinReaderVersion: d.MinReaderVersion, BootID: d.BootID, Unknown: unknown}
	if len(d.Claims) > 0 && string(d.Claims) != "null" {
		if err := json.Unmarshal(d.Claims, &f.Claims); err != nil {
			return nil, fmt.Errorf("%w: claims: %w", ErrCorrupt, err)
		}
	}
	if f.Claims == nil {
		f.Claims = map[string]Claim{}
	}
	return f, nil
}

// Encode writes f in the current format, with its checksum. Unknown
// fields are kept; the version fields are this writer's.
func Encode(f *File) ([]byte, error) {
	claims, err := json.Marshal(f.Claims)
	if err != nil {
		return nil, err
	}
	d := onDisk{Version: Version, MinReaderVersion: MinReaderVersion, BootID: f.BootID, Claims: claims}
	d.Checksum = checksum(d.Version, d.MinReaderVersion, d.BootID, claims)
	return marshalKeeping(d, f.Unknown)
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
	s.file.Unknown = f.Unknown
	return s, prev, nil
}

// MoveAside renames a checkpoint that cannot be used (ErrCorrupt) to
// <path>.corrupt-<unix time>, keeping it for inspection, and returns the
// new name. The next Open starts empty.
func MoveAside(path string, now time.Time) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%d", path, now.Unix())
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("move corrupt checkpoint aside: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("move corrupt checkpoint aside: %w", err)
	}
	return aside, nil
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
	s.file.Unknown = f.Unknown
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
	data, err := Encode(&s.file)
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

// unmarshalKeeping decodes data into v (a pointer to a struct without its
// own UnmarshalJSON) and returns the object's fields that v does not
// declare.
func unmarshalKeeping(data []byte, v any) (map[string]json.RawMessage, error) {
	if err := json.Unmarshal(data, v); err != nil {
		return nil, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return nil, err
	}
	for _, k := range jsonKeys(reflect.TypeOf(v).Elem()) {
		delete(all, k)
	}
	if len(all) == 0 {
		return nil, nil
	}
	return all, nil
}

// marshalKeeping encodes v (a struct without its own MarshalJSON) and adds
// the unknown fields that v does not set itself.
func marshalKeeping(v any, unknown map[string]json.RawMessage) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil || len(unknown) == 0 {
		return data, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return nil, err
	}
	for k, raw := range unknown {
		if _, set := all[k]; !set {
			all[k] = raw
		}
	}
	return json.Marshal(all)
}

// jsonKeys lists the JSON names a struct type declares, including those of
// fields left out when empty.
func jsonKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		keys = append(keys, name)
	}
	return keys
}
