// Package images builds container images from files of this machine, for a
// node whose container runtime cannot reach any registry: an image is one
// uncompressed layer, written as an OCI image layout archive (oci-layout,
// index.json, blobs/sha256/...) that `ctr images import` reads.
//
// Dynamically linked programs are copied with their shared libraries (the
// ELF DT_NEEDED closure, resolved like the glibc loader resolves them on this
// machine) so that a glibc image holds exactly what its programs need.
package images

import (
	"archive/tar"
	"bytes"
	// go-digest computes sha256 digests with the registered hash; a program
	// that links nothing else that imports it would panic.
	_ "crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one file of an image.
type File struct {
	// Path is where the file is in the image (absolute).
	Path string
	// Source is the file of this machine whose content is copied; Data is
	// used when Source is empty.
	Source string
	Data   []byte
	// Mode is the permission bits (default 0o755 for a Source, 0o644 for Data).
	Mode os.FileMode
	// Symlink, when set, makes the entry a symbolic link to Symlink.
	Symlink string
}

// Image is what an image holds and how its containers start.
type Image struct {
	// Name is the reference the image is imported under, fully qualified
	// as the CRI normalises it, e.g. docker.io/local/cuda-sim:1.
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// fixed time for every entry, so that an image built twice from the same
// files has the same digest and a re-import is a no-op.
var epoch = time.Unix(0, 0).UTC()

// WriteArchive writes img as an OCI image layout tar to w.
func WriteArchive(w io.Writer, img Image) error {
	if img.Name == "" {
		return fmt.Errorf("image without a name")
	}
	layer, err := layerTar(img.Files)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Name, err)
	}
	layerDesc := descriptor(ocispec.MediaTypeImageLayer, layer)

	config, err := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		Config:   ocispec.ImageConfig{Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env},
		// An uncompressed layer: its diff ID is its own digest.
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
	})
	if err != nil {
		return err
	}
	configDesc := descriptor(ocispec.MediaTypeImageConfig, config)

	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return err
	}
	manifestDesc := descriptor(ocispec.MediaTypeImageManifest, manifest)
	manifestDesc.Platform = &ocispec.Platform{Architecture: "amd64", OS: "linux"}
	// containerd names the imported image after these annotations.
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name": img.Name,
		ocispec.AnnotationRefName:  img.Name,
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	entries := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layout},
		{"blobs/sha256/" + layerDesc.Digest.Encoded(), layer},
		{"blobs/sha256/" + configDesc.Digest.Encoded(), config},
		{"blobs/sha256/" + manifestDesc.Digest.Encoded(), manifest},
		{ocispec.ImageIndexFile, index},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteArchiveFile writes img's archive to path.
func WriteArchiveFile(path string, img Image) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("image archive: %w", err)
	}
	if err := WriteArchive(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// layerTar is the root filesystem: the files, and every parent directory
// (0755) before its first entry.
func layerTar(files []File) ([]byte, error) {
	byPath := map[string]File{}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			return nil, fmt.Errorf("file without a path")
		}
		if old, dup := byPath[p]; dup && (old.Source != f.Source || old.Symlink != f.Symlink || !bytes.Equal(old.Data, f.Data)) {
			return nil, fmt.Errorf("two different files for %s", p)
		}
		f.Path = p
		byPath[p] = f
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, p := range paths {
		f := byPath[p]
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(parents[i], "/") + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		if err := writeFile(tw, f); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeFile(tw *tar.Writer, f File) error {
	name := strings.TrimPrefix(f.Path, "/")
	if f.Symlink != "" {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.Symlink, Mode: 0o777, ModTime: epoch})
	}
	data, mode := f.Data, f.Mode
	if f.Source != "" {
		var err error
		// Follow symlinks: the image gets the content, not the host's link.
		if data, err = os.ReadFile(f.Source); err != nil {
			return fmt.Errorf("image file %s: %w", f.Path, err)
		}
		if mode == 0 {
			mode = 0o755
		}
	}
	if mode == 0 {
		mode = 0o644
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode.Perm()), Size: int64(len(data)), ModTime: epoch}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
