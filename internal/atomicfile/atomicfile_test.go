package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesAndLeavesNoTemp(t *testing.T) {
	for _, durable := range []bool{false, true} {
		dir := t.TempDir()
		p := filepath.Join(dir, "spec.json")
		for _, content := range []string{"first", "second, longer"} {
			if err := WriteFile(p, []byte(content), 0o640, durable); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil || string(got) != content {
				t.Fatalf("durable=%v: content %q, %v; want %q", durable, got, err, content)
			}
			st, _ := os.Stat(p)
			if st.Mode().Perm() != 0o640 {
				t.Fatalf("mode %v, want 0640", st.Mode().Perm())
			}
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("durable=%v: directory holds %v, want only spec.json", durable, entries)
		}
	}
}

func TestWriteFileFailsInMissingDir(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "such"), []byte("x"), 0o644, true); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestTempFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		temp bool
	}{
		{".checkpoint.json" + TempSuffix + "123", true},
		{".hami.io-vgpu_uid.json" + TempSuffix + "9", true},
		{"checkpoint.json", false},
		{".hidden", false},
		{"x" + TempSuffix + "1", false}, // not ours: no leading dot
	} {
		if got := IsTempFile(tc.name); got != tc.temp {
			t.Errorf("IsTempFile(%q) = %v, want %v", tc.name, got, tc.temp)
		}
		if filepath.Ext(tc.name) == ".json" && tc.temp {
			t.Errorf("temp file %q ends in .json: CDI runtimes would read it", tc.name)
		}
	}
	dir := t.TempDir()
	for _, n := range []string{".a" + TempSuffix + "1", "keep.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveTempFiles(dir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != "keep.json" {
		t.Fatalf("after RemoveTempFiles: %v", entries)
	}
	if err := RemoveTempFiles(filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
}
