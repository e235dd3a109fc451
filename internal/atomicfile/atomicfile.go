// Package atomicfile replaces files so that readers see the old or the new
// content, never a mix: write a temp file next to the target, optionally
// fsync it, rename it over the target, and fsync the directory. It is the
// one file helper of the plugin's state (checkpoint, reservation files) and
// of its CDI specs, so neither has to import the other.
package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
)

// TempSuffix marks temp files of WriteFile. A temp file's name starts with
// "." and carries this suffix after the target's name, so it never ends in
// ".json" or ".yaml": CDI runtimes, which scan only those extensions, do
// not read a half-written spec. Recovery removes leftovers (IsTempFile).
const TempSuffix = ".tmp-"

// WriteFile writes data to a temp file next to path, fsyncs it when
// durable is set, renames it over path and, when durable, fsyncs the
// directory so the rename survives a crash.
func WriteFile(path string, data []byte, perm os.FileMode, durable bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+TempSuffix)
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(name)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		return err
	}
	ok = true
	if durable {
		return SyncDir(dir)
	}
	return nil
}

// IsTempFile reports whether a directory entry is a leftover temp file of
// WriteFile.
func IsTempFile(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, TempSuffix)
}

// RemoveTempFiles removes leftover temp files from dir, e.g. after a crash.
// A missing directory is not an error.
func RemoveTempFiles(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if IsTempFile(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

// SyncDir fsyncs a directory so a rename in it survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
