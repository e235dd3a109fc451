package checkpoint

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hami-dra/hami-dra/internal/atomicfile"
)

func TestDecodeVersions(t *testing.T) {
	for _, tc := range []struct {
		file    string
		wantErr error
		claims  int
	}{
		{"v1.json", nil, 1},
		{"v9-future.json", nil, 1}, // downgrade: newer writer, compatible
		{"v3-incompatible.json", ErrTooNew, 0},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			f, err := Decode(data)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if err == nil && len(f.Claims) != tc.claims {
				t.Fatalf("got %d claims, want %d", len(f.Claims), tc.claims)
			}
			if err == nil && f.Claims["uid-1"].State != PrepareCompleted {
				t.Fatalf("state %q", f.Claims["uid-1"].State)
			}
		})
	}
}

func TestStoreRoundTripAndGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "checkpoint.json")
	s, prev, err := Open(path, "boot-b")
	if err != nil || prev != "boot-b" {
		t.Fatalf("open: %v %q", err, prev)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s.Put(string(rune('a'+i%26))+string(rune('a'+i/26)), Claim{State: PrepareStarted})
			if err := s.Sync(); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	s2, _, err := Open(path, "boot-c")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s2.Claims()); n != 50 {
		t.Fatalf("reloaded %d claims, want 50", n)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if atomicfile.IsTempFile(e.Name()) {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, name := range []string{"v1.json", "v9-future.json", "v3-incompatible.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, err := Decode(data)
		if err == nil && (cp.Claims == nil || cp.Version < 1 || cp.MinReaderVersion > Version) {
			t.Fatalf("accepted an unusable checkpoint: %+v", cp)
		}
	})
}

// TestCorruptCheckpointIsDetected: a file that was cut short, had a byte
// flipped or lost its checksum is ErrCorrupt, never a silently different
// set of claims.
func TestCorruptCheckpointIsDetected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "checkpoint.json")
	s, _, err := Open(path, "boot-a")
	if err != nil {
		t.Fatal(err)
	}
	s.Put("uid-1", Claim{Namespace: "default", Name: "c1", State: PrepareCompleted, GPUs: []GPUQuota{{UUID: "GPU-aa", Minor: 0, MemoryBytes: 1 << 30, Cores: 30}}})
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(good); err != nil {
		t.Fatalf("good file: %v", err)
	}
	for name, data := range map[string][]byte{
		"truncated":       good[:len(good)/2],
		"empty":           {},
		"cores changed":   []byte(strings.Replace(string(good), `"cores":30`, `"cores":90`, 1)),
		"boot ID changed": []byte(strings.Replace(string(good), `"boot-a"`, `"boot-b"`, 1)),
		"no checksum":     []byte(strings.Replace(string(good), `"checksum"`, `"checksumx"`, 1)),
		"garbage":         []byte("\x00\x00\x00"),
	} {
		if _, err := Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: error %v, want ErrCorrupt", name, err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Open(path, "boot-a"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Open error %v, want ErrCorrupt", name, err)
		}
	}
	aside, err := MoveAside(path, time.Unix(1700000000, 0))
	if err != nil || aside != path+".corrupt-1700000000" {
		t.Fatalf("MoveAside = %q, %v", aside, err)
	}
	if s, _, err := Open(path, "boot-a"); err != nil || len(s.Claims()) != 0 {
		t.Fatalf("open after MoveAside: %v", err)
	}
}

// TestUnknownFieldsSurviveDowngrade: a newer plugin's fields (of the file,
// a claim and a GPU) are written back unchanged by this one.
func TestUnknownFieldsSurviveDowngrade(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "v9-future.json"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "checkpoint.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, prev, err := Open(path, "boot-b")
	if err != nil || prev != "boot-a" {
		t.Fatalf("open: %v %q", err, prev)
	}
	// This plugin changes the newer plugin's claim and adds one.
	c, _ := s.Get("uid-1")
	c.State = UnprepareStarted
	s.Put("uid-1", c)
	s.Put("uid-2", Claim{State: PrepareStarted})
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version        int
		FutureTopLevel map[string]int `json:"futureTopLevel"`
		Claims         map[string]struct {
			State       string
			FutureField *bool `json:"futureField"`
			GPUs        []struct {
				UUID string
				MIG  string `json:"mig"`
			}
		}
	}
	if err := json.Unmarshal(written, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.FutureTopLevel["x"] != 1 {
		t.Errorf("top-level field lost: %s", written)
	}
	c1 := doc.Claims["uid-1"]
	if c1.State != string(UnprepareStarted) || c1.FutureField == nil || !*c1.FutureField || len(c1.GPUs) != 1 || c1.GPUs[0].MIG != "none" || c1.GPUs[0].UUID != "GPU-aa" {
		t.Errorf("claim fields lost: %+v in %s", c1, written)
	}
	if doc.Version != Version {
		t.Errorf("version %d, want this writer's %d", doc.Version, Version)
	}
	if _, err := Decode(written); err != nil {
		t.Errorf("written file does not decode: %v", err)
	}
}
