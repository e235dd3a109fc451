package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// readArchive returns the files of an OCI layout tar by name.
func readArchive(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeSymlink {
			b, _ := io.ReadAll(tr)
			if h.Typeflag == tar.TypeSymlink {
				b = []byte("->" + h.Linkname)
			}
			files[h.Name] = b
		}
	}
}

func blob(t *testing.T, files map[string][]byte, d ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	if digest.FromBytes(b) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: content does not match its descriptor", d.Digest)
	}
	return b
}

func TestWriteArchive(t *testing.T) {
	src := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	img := Image{
		Name: "docker.io/local/test:1",
		Files: []File{
			{Path: "/usr/bin/prog", Source: src},
			{Path: "etc/motd", Data: []byte("hi")},
			{Path: "/bin/sh", Symlink: "/usr/bin/prog"},
		},
		Entrypoint: []string{"/usr/bin/prog"},
		Env:        []string{"PATH=/usr/bin"},
	}
	var buf bytes.Buffer
	if err := WriteArchive(&buf, img); err != nil {
		t.Fatal(err)
	}
	files := readArchive(t, buf.Bytes())
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if _, ok := files["oci-layout"]; !ok || len(index.Manifests) != 1 {
		t.Fatalf("not an OCI layout with one manifest: %v", index)
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != img.Name {
		t.Errorf("image name annotation %q, want %q", got, img.Name)
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(blob(t, files, index.Manifests[0]), &manifest); err != nil {
		t.Fatal(err)
	}
	var config ocispec.Image
	if err := json.Unmarshal(blob(t, files, manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("layer and diff ID disagree: %v %v", manifest.Layers, config.RootFS.DiffIDs)
	}
	if config.Config.Entrypoint[0] != "/usr/bin/prog" || config.OS != "linux" || config.Architecture != "amd64" {
		t.Errorf("config %+v", config)
	}
	layer := readArchive(t, blob(t, files, manifest.Layers[0]))
	for name, want := range map[string]string{"usr/bin/prog": "#!/bin/sh\n", "etc/motd": "hi", "bin/sh": "->/usr/bin/prog"} {
		if string(layer[name]) != want {
			t.Errorf("layer file %s = %q, want %q", name, layer[name], want)
		}
	}

	// The same files give the same archive: a second import is a no-op.
	var again bytes.Buffer
	if err := WriteArchive(&again, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds of one image differ")
	}
}

func TestWriteArchiveErrors(t *testing.T) {
	for name, img := range map[string]Image{
		"no name":        {Files: []File{{Path: "/a", Data: []byte("x")}}},
		"missing source": {Name: "x", Files: []File{{Path: "/a", Source: "/nonexistent/file"}}},
		"conflict":       {Name: "x", Files: []File{{Path: "/a", Data: []byte("x")}, {Path: "/a", Data: []byte("y")}}},
		"root path":      {Name: "x", Files: []File{{Path: "/", Data: []byte("x")}}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := WriteArchive(io.Discard, img); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestLibraries(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh: %v", err)
	}
	files, err := Libraries(nil, sh)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, f := range files {
		paths[filepath.Base(f.Path)] = true
	}
	if !paths["libc.so.6"] || !paths["ld-linux-x86-64.so.2"] {
		t.Errorf("the closure of %s lacks libc or the loader: %v", sh, paths)
	}
	files, err = Libraries(map[string]bool{"libc.so.6": true}, sh)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if filepath.Base(f.Path) == "libc.so.6" {
			t.Errorf("a provided library was copied: %s", f.Path)
		}
	}
	if _, err := Libraries(nil, "/nonexistent"); err == nil {
		t.Error("no error for a missing program")
	}
}
