// Package region reads the usage counters that libvgpu keeps in a claim's
// shared accounting region (vgpu-core/README.md, "Shared region", version 1),
// for the plugin's metrics.
//
// The file lives in the per-claim directory, which the claim's containers can
// write: everything read here is untrusted. It is only ever reported as
// usage, never used as a limit, and the parser checks every size and offset
// before it uses it (it is fuzzed).
package region

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Layout constants of version 1 (vgpu-core/src/region.h).
const (
	Magic      = 0x55504756
	Version    = 1
	headerSize = 256
	deviceSize = 256
	maxDevices = 16
	uuidLen    = 96

	// Offsets within a device entry.
	offMemUsed   = 104
	offGPUNs     = 120
	offThrottled = 152
)

// ErrNotFound means no process of the claim has used CUDA yet: libvgpu
// creates the file on first use.
var ErrNotFound = errors.New("no accounting region yet")

// Device is the claim's usage of one GPU, as libvgpu accounts it.
type Device struct {
	UUID string
	// MemoryUsedBytes is the device memory the claim's processes hold.
	MemoryUsedBytes uint64
	// GPUTimeNs is the GPU time measured for the claim's kernels, ns,
	// cumulative (the compute limiter's measurement; 0 when no share is
	// enforced).
	GPUTimeNs uint64
	// ThrottledNs is the time launches were held back by the limiter, ns,
	// cumulative.
	ThrottledNs uint64
}

// Image returns a version-1 region holding devices, laid out as libvgpu
// lays it out (process slots empty). Tests of the readers use it, so that
// the layout is written down once on the Go side.
func Image(devices ...Device) []byte {
	le := binary.LittleEndian
	const slots, slotSize = 1024, 192
	buf := make([]byte, headerSize+maxDevices*deviceSize+slots*slotSize)
	for off, v := range map[int]uint32{0: Magic, 4: Version, 8: headerSize, 12: uint32(len(buf)), 16: maxDevices,
		20: slots, 24: deviceSize, 28: slotSize, 32: headerSize, 36: headerSize + maxDevices*deviceSize} {
		le.PutUint32(buf[off:], v)
	}
	for i, d := range devices[:min(len(devices), maxDevices)] {
		e := buf[headerSize+i*deviceSize:]
		copy(e[:uuidLen], d.UUID)
		le.PutUint64(e[offMemUsed:], d.MemoryUsedBytes)
		le.PutUint64(e[offGPUNs:], d.GPUTimeNs)
		le.PutUint64(e[offThrottled:], d.ThrottledNs)
	}
	return buf
}

// ReadFile reads the region at path. Only the header and the device
// entries are read (4 KiB), never the process slots.
//
// The claim's containers can replace the file, so it is opened without
// following a symbolic link and without blocking (a FIFO planted there must
// not hang the privileged plugin), and only a regular file of a region's
// size at least is read.
func ReadFile(path string) ([]Device, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, ErrNotFound
	}
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("accounting region %s is a symbolic link: not read", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open accounting region %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat accounting region %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("accounting region %s is not a regular file (mode %#o): not read", path, st.Mode&unix.S_IFMT)
	}
	buf := make([]byte, headerSize+maxDevices*deviceSize)
	if st.Size < int64(len(buf)) {
		return nil, fmt.Errorf("accounting region %s: %d bytes, shorter than a region's header and devices (%d)", path, st.Size, len(buf))
	}
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read accounting region %s: %w", path, err)
	}
	devices, err := Parse(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("accounting region %s: %w", path, err)
	}
	return devices, nil
}

// Parse decodes the header and the device entries in data (at least the
// first headerSize + maxDevices*deviceSize bytes of the file).
func Parse(data []byte) ([]Device, error) {
	le := binary.LittleEndian
	if len(data) < headerSize {
		return nil, fmt.Errorf("truncated: %d bytes, the header has %d", len(data), headerSize)
	}
	if m := le.Uint32(data[0:]); m != Magic {
		return nil, fmt.Errorf("bad magic %#x, want %#x", m, Magic)
	}
	if v := le.Uint32(data[4:]); v != Version {
		return nil, fmt.Errorf("version %d, this plugin reads version %d", v, Version)
	}
	hdr, ndev := le.Uint32(data[8:]), le.Uint32(data[16:])
	devSize, devOff := le.Uint32(data[24:]), le.Uint32(data[32:])
	if hdr != headerSize || ndev != maxDevices || devSize != deviceSize || devOff != headerSize {
		return nil, fmt.Errorf("layout (header %d, %d devices of %d bytes at %d) is not version %d's", hdr, ndev, devSize, devOff, Version)
	}
	end := headerSize + maxDevices*deviceSize
	if len(data) < end {
		return nil, fmt.Errorf("truncated: %d bytes, the device entries end at %d", len(data), end)
	}
	var out []Device
	for i := range maxDevices {
		e := data[headerSize+i*deviceSize : headerSize+(i+1)*deviceSize]
		uuid := e[:uuidLen]
		if uuid[0] == 0 {
			continue
		}
		if j := bytes.IndexByte(uuid, 0); j >= 0 {
			uuid = uuid[:j]
		}
		out = append(out, Device{
			UUID:            string(uuid),
			MemoryUsedBytes: le.Uint64(e[offMemUsed:]),
			GPUTimeNs:       le.Uint64(e[offGPUNs:]),
			ThrottledNs:     le.Uint64(e[offThrottled:]),
		})
	}
	return out, nil
}
