package images

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// libraryDirs are the directories the glibc loader of a Debian/Ubuntu amd64
// machine searches without an ld.so.cache: its multiarch trusted directories
// first. An image gets each library at the path where it was found here, so
// the loader in the container finds it the same way.
var libraryDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// Libraries returns the files that the ELF programs or libraries at hostPaths
// need at run time: their interpreter (the dynamic loader) and the closure of
// their DT_NEEDED libraries, each at its path on this machine. Libraries
// named in provided (e.g. libcuda.so.1, which the GPU's CDI spec mounts into
// the container) are not looked up, nor are their own dependencies.
func Libraries(provided map[string]bool, hostPaths ...string) ([]File, error) {
	seen := map[string]bool{}
	var files []File
	queue := append([]string(nil), hostPaths...)
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		interp, needed, err := dynamicDeps(file)
		if err != nil {
			return nil, err
		}
		if interp != "" && !seen[interp] {
			seen[interp] = true
			files = append(files, File{Path: interp, Source: interp})
		}
		for _, name := range needed {
			if provided[name] || seen[name] {
				continue
			}
			seen[name] = true
			found, err := findLibrary(name)
			if err != nil {
				return nil, fmt.Errorf("%s needs %s: %w", file, name, err)
			}
			files = append(files, File{Path: found, Source: found})
			queue = append(queue, found)
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// Programs returns the programs (image path -> host path) together with the
// libraries they need (see Libraries).
func Programs(provided map[string]bool, programs map[string]string) ([]File, error) {
	var files []File
	var hostPaths []string
	for imagePath, hostPath := range programs {
		files = append(files, File{Path: imagePath, Source: hostPath, Mode: 0o755})
		hostPaths = append(hostPaths, hostPath)
	}
	sort.Strings(hostPaths)
	libs, err := Libraries(provided, hostPaths...)
	if err != nil {
		return nil, err
	}
	return append(files, libs...), nil
}

// dynamicDeps reads an ELF file's interpreter and DT_NEEDED entries; a
// static executable has neither.
func dynamicDeps(file string) (interp string, needed []string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("read ELF %s: %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			buf := make([]byte, p.Filesz)
			if _, err := p.ReadAt(buf, 0); err != nil {
				return "", nil, fmt.Errorf("ELF interpreter of %s: %w", file, err)
			}
			interp = strings.TrimRight(string(buf), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, fmt.Errorf("ELF libraries of %s: %w", file, err)
	}
	return interp, needed, nil
}

func findLibrary(name string) (string, error) {
	for _, dir := range libraryDirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %v", libraryDirs)
}
