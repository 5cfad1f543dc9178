package tracepoint

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Dir is where tracefs is mounted.
const Dir = "/sys/kernel/tracing"

// ErrNoTracepoint reports that the kernel has no such tracepoint: too old
// (the tcp_hash_* events came with Linux 6.11), built without it, or without
// tracing at all.
var ErrNoTracepoint = errors.New("tracepoint: the kernel has no such tracepoint")

// ErrPermission reports that perf_event_open(2) refused: reading
// tracepoints needs CAP_PERFMON (or CAP_SYS_ADMIN, root).
var ErrPermission = errors.New("tracepoint: reading tracepoints needs CAP_PERFMON or root")

// Load reads the format of tracepoint system:name from tracefs, mounting
// tracefs at Dir first if it is not there.
func Load(system, name string) (Format, error) {
	path := filepath.Join(Dir, "events", system, name, "format")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(Dir, "events")); errors.Is(serr, os.ErrNotExist) {
			merr := unix.Mount("nodev", Dir, "tracefs", 0, "")
			if errors.Is(merr, unix.EPERM) {
				return Format{}, fmt.Errorf("%w: mounting tracefs at %s: %w", ErrPermission, Dir, os.NewSyscallError("mount", merr))
			}
			if merr == nil {
				f, err = os.Open(path)
			}
		}
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return Format{}, fmt.Errorf("%w: %s:%s (%s)", ErrNoTracepoint, system, name, path)
	case errors.Is(err, os.ErrPermission):
		return Format{}, fmt.Errorf("%w: reading %s: %w", ErrPermission, path, err)
	case err != nil:
		return Format{}, fmt.Errorf("tracepoint: %w", err)
	}
	defer f.Close()
	return ParseFormat(f)
}

// Reader reads the records of tracepoints from a ring buffer per CPU. It
// waits for them on the runtime's poller, through an epoll(7) instance
// over the rings' descriptors. Its methods are safe for concurrent use:
// Reads take turns, and Close waits for the one in progress.
type Reader struct {
	rings  []*ring
	epoll  *os.File        // the epoll instance, nonblocking, in the runtime's poller
	rc     syscall.RawConn // epoll's
	lost   atomic.Uint64
	closed atomic.Bool
	mu     sync.Mutex // held while draining the rings, which Close unmaps
}

// ring is one CPU's perf events and the ring buffer they share.
type ring struct {
	fds  []int                   // one a tracepoint; the first owns the ring
	mem  []byte                  // the mapping: the control page, then the data
	meta *unix.PerfEventMmapPage // the control page
	data []byte                  // the data, a power of two of pages
}

// Open starts reading records of the tracepoints formats on every CPU,
// into one ring buffer per CPU of pagesPerCPU pages (a power of two), with
// filter, if not empty, applied to each in the kernel
// (PERF_EVENT_IOC_SET_FILTER, tracefs filter syntax, as in "dport == 179").
// A record tells its tracepoint by its common_type field, the format's ID.
func Open(filter string, pagesPerCPU int, formats ...Format) (*Reader, error) {
	if pagesPerCPU <= 0 || pagesPerCPU&(pagesPerCPU-1) != 0 {
		return nil, fmt.Errorf("tracepoint: %d pages a CPU: want a power of two", pagesPerCPU)
	}
	if len(formats) == 0 {
		return nil, errors.New("tracepoint: no tracepoint to read")
	}
	r := &Reader{}
	fail := func(err error) (*Reader, error) {
		r.Close()
		return nil, err
	}
	efd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("tracepoint: %w", os.NewSyscallError("epoll_create1", err))
	}
	if err := unix.SetNonblock(efd, true); err != nil {
		_ = unix.Close(efd)
		return nil, fmt.Errorf("tracepoint: %w", os.NewSyscallError("fcntl", err))
	}
	r.epoll = os.NewFile(uintptr(efd), "tracepoint rings")
	if r.rc, err = r.epoll.SyscallConn(); err != nil {
		return fail(fmt.Errorf("tracepoint: %w", err))
	}
	for cpu := range runtime.NumCPU() {
		rg, err := openRing(formats, cpu, filter, pagesPerCPU)
		if err != nil {
			return fail(err)
		}
		r.rings = append(r.rings, rg)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(rg.fds[0])}
		if err := unix.EpollCtl(efd, unix.EPOLL_CTL_ADD, rg.fds[0], &ev); err != nil {
			return fail(fmt.Errorf("tracepoint: %w", os.NewSyscallError("epoll_ctl", err)))
		}
	}
	return r, nil
}

// openEvent opens tracepoint f on cpu, disabled, with filter.
func openEvent(f Format, cpu int, filter string) (int, error) {
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_TRACEPOINT,
		Config:      f.ID,
		Sample:      1, // every event
		Sample_type: unix.PERF_SAMPLE_RAW,
		Bits:        unix.PerfBitDisabled,
		Wakeup:      1, // poll wakes for every record
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		err = os.NewSyscallError("perf_event_open", err)
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return -1, fmt.Errorf("%w (or a lower kernel.perf_event_paranoid): %w", ErrPermission, err)
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOSYS) {
			return -1, fmt.Errorf("%w: %s (perf events): %w", ErrNoTracepoint, f.Name, err)
		}
		return -1, fmt.Errorf("tracepoint: %s on CPU %d: %w", f.Name, cpu, err)
	}
	if filter != "" {
		b, err := unix.BytePtrFromString(filter)
		if err == nil {
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.PERF_EVENT_IOC_SET_FILTER, uintptr(unsafe.Pointer(b))); errno != 0 {
				err = os.NewSyscallError("ioctl", errno)
			}
		}
		if err != nil {
			_ = unix.Close(fd)
			return -1, fmt.Errorf("tracepoint: filter %q for %s: %w", filter, f.Name, err)
		}
	}
	return fd, nil
}

// openRing opens every tracepoint of formats on cpu, maps the first one's
// ring buffer and sends the others' records there (PERF_EVENT_IOC_SET_OUTPUT).
func openRing(formats []Format, cpu int, filter string, pages int) (*ring, error) {
	rg := &ring{}
	fail := func(err error) (*ring, error) {
		rg.close()
		return nil, err
	}
	for _, f := range formats {
		fd, err := openEvent(f, cpu, filter)
		if err != nil {
			return fail(err)
		}
		rg.fds = append(rg.fds, fd)
	}
	page := os.Getpagesize()
	var err error
	rg.mem, err = unix.Mmap(rg.fds[0], 0, page*(1+pages), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("tracepoint: mapping the ring buffer: %w", os.NewSyscallError("mmap", err)))
	}
	rg.meta = (*unix.PerfEventMmapPage)(unsafe.Pointer(&rg.mem[0]))
	rg.data = rg.mem[page:]
	for i, fd := range rg.fds {
		if i > 0 {
			if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_OUTPUT, rg.fds[0]); err != nil {
				return fail(fmt.Errorf("tracepoint: sharing the ring buffer of CPU %d: %w", cpu, os.NewSyscallError("ioctl", err)))
			}
		}
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
			return fail(fmt.Errorf("tracepoint: enabling %s: %w", formats[i].Name, os.NewSyscallError("ioctl", err)))
		}
	}
	return rg, nil
}

// Read waits until records arrive, on any CPU, and returns their raw
// payloads, each laid out as its Format says; or until ctx is done (ctx's
// error), or the Reader is closed (an error matching net.ErrClosed).
// Records the kernel dropped because a ring was full are counted in Lost.
func (r *Reader) Read(ctx context.Context) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ctx.Done() != nil {
		// A done ctx ends the wait through a deadline in the past, which
		// this Read takes back before it returns.
		fired := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(fired)
			_ = r.epoll.SetReadDeadline(time.Unix(1, 0))
		})
		defer func() {
			if !stop() {
				<-fired
				_ = r.epoll.SetReadDeadline(time.Time{})
			}
		}()
	}
	var out [][]byte
	err := r.rc.Read(func(fd uintptr) bool {
		var events [16]unix.EpollEvent
		_, _ = unix.EpollWait(int(fd), events[:], 0) // takes the readiness the kernel reported
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, rg := range r.rings {
			out = rg.drain(out, &r.lost)
		}
		return len(out) > 0
	})
	switch {
	case err == nil:
		return out, nil
	case r.closed.Load():
		return nil, fmt.Errorf("tracepoint: %w", net.ErrClosed)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("tracepoint: %w", err)
}

// Lost returns how many records the kernel dropped because a ring buffer
// was full, since Open.
func (r *Reader) Lost() uint64 { return r.lost.Load() }

// Close stops reading and releases every ring, once a Read in progress
// has let go of them.
func (r *Reader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	if r.epoll != nil {
		_ = r.epoll.Close() // ends the Read in progress; no drain starts after it
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rg := range r.rings {
		rg.close()
	}
	r.rings = nil
	return nil
}

func (rg *ring) close() {
	if rg.mem != nil {
		_ = unix.Munmap(rg.mem)
		rg.mem = nil
	}
	for _, fd := range rg.fds {
		_ = unix.Close(fd)
	}
	rg.fds = nil
}

// drain appends the payloads of the ring's records to out and hands their
// space back to the kernel.
func (rg *ring) drain(out [][]byte, lost *atomic.Uint64) [][]byte {
	head := atomic.LoadUint64(&rg.meta.Data_head) // the load is the read barrier the kernel pairs with
	tail := rg.meta.Data_tail
	size := uint64(len(rg.data))
	for tail < head {
		hdr := rg.bytes(tail, 8)
		typ := binary.NativeEndian.Uint32(hdr[0:4])
		length := uint64(binary.NativeEndian.Uint16(hdr[6:8]))
		if length < 8 || length > size {
			break // cannot happen with a sane kernel; stop rather than loop
		}
		rec := rg.bytes(tail+8, length-8)
		switch typ {
		case unix.PERF_RECORD_SAMPLE: // u32 size, then the raw payload
			if len(rec) >= 4 {
				n := uint64(binary.NativeEndian.Uint32(rec[0:4]))
				if 4+n <= uint64(len(rec)) {
					out = append(out, rec[4:4+n])
				}
			}
		case unix.PERF_RECORD_LOST: // u64 id, u64 lost
			if len(rec) >= 16 {
				lost.Add(binary.NativeEndian.Uint64(rec[8:16]))
			}
		}
		tail += length
	}
	atomic.StoreUint64(&rg.meta.Data_tail, tail)
	return out
}

// bytes copies n bytes of the ring from position pos, across its end.
func (rg *ring) bytes(pos, n uint64) []byte {
	size := uint64(len(rg.data))
	b := make([]byte, n)
	start := pos % size
	c := copy(b, rg.data[start:min(start+n, size)])
	copy(b[c:], rg.data)
	return b
}
