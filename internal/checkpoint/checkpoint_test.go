package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hami-dra/hami-dra/internal/atomicfile"
)

func TestDecodeVersions(t *testing.T) {
	for _, tc := range []struct {
		file    string
		wantErr error
		claims  int
	}{
		{"v1.json", nil, 1},
		{"v2-future.json", nil, 1}, // downgrade: newer writer, compatible
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
	for _, name := range []string{"v1.json", "v2-future.json", "v3-incompatible.json"} {
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
