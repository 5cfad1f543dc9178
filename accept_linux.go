//go:build !tcpmd5stub

package tcpmd5

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fanIn waits for a connection on every socket of a group at once, on the
// runtime's poller: an epoll(7) instance watches the sockets' accept
// queues and an eventfd(2), which wakes it for the connections a key
// change took off a queue (pending). The goroutine that calls Accept waits
// and accepts itself: no goroutine per socket, no hand-off. Its deadline
// is the epoll instance's, the one descriptor behind them all.
type fanIn struct {
	poll    *os.File        // the epoll instance, nonblocking, in the runtime's poller
	rc      syscall.RawConn // poll's
	wake    int             // the eventfd
	closed  atomic.Bool
	locking func() // tests only: runs in accept's callback before it takes the lock

	// What accept judges a connection with: the listener's lock, read-held
	// from accept(2) to the verdict, and the judge.
	lock  *sync.RWMutex
	judge func(*shard, *net.TCPConn) accepted

	// One accept at a time waits on the instance, as the runtime would
	// have them anyway; turn is what its callback, step, found. Both are
	// made once, so that an accept allocates nothing of its own.
	turnMu sync.Mutex
	turn   turn
	step   func(efd uintptr) bool

	mu       sync.Mutex
	shards   map[int32]*shard // the watched sockets, by descriptor
	pending  []accepted       // judged during a key change, for Accept
	npending atomic.Int32     // len(pending), read without mu
}

// turn is what one accept's callback found: a connection, judged, or the
// error of accept(2).
type turn struct {
	a   accepted
	err error
}

// newFanIn returns a fan-in that judges each connection with judge while
// it holds lock for reading.
func newFanIn(lock *sync.RWMutex, judge func(*shard, *net.TCPConn) accepted) (*fanIn, error) {
	efd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("tcpmd5: %w", os.NewSyscallError("epoll_create1", err))
	}
	if err := unix.SetNonblock(efd, true); err != nil {
		_ = unix.Close(efd)
		return nil, fmt.Errorf("tcpmd5: %w", os.NewSyscallError("fcntl", err))
	}
	f := &fanIn{poll: os.NewFile(uintptr(efd), "accept queues"), wake: -1, lock: lock, judge: judge, shards: make(map[int32]*shard)}
	f.step = f.try
	if f.rc, err = f.poll.SyscallConn(); err == nil {
		f.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		err = os.NewSyscallError("eventfd", err)
	}
	if err == nil {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(f.wake)}
		err = os.NewSyscallError("epoll_ctl", unix.EpollCtl(efd, unix.EPOLL_CTL_ADD, f.wake, &ev))
	}
	if err != nil {
		f.close()
		return nil, fmt.Errorf("tcpmd5: %w", err)
	}
	return f, nil
}

// add watches the accept queue of s.
func (f *fanIn) add(s *shard) error {
	return controlErr(s.rc, func(fd int) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := f.ctl(unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("tcpmd5: watching a socket of the group: %w", os.NewSyscallError("epoll_ctl", err))
		}
		f.shards[int32(fd)] = s
		return nil
	})
}

// remove stops watching s, before it closes.
func (f *fanIn) remove(s *shard) {
	_ = controlErr(s.rc, func(fd int) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.shards, int32(fd))
		return f.ctl(unix.EPOLL_CTL_DEL, fd, nil)
	})
}

// ctl is epoll_ctl(2) on the instance.
func (f *fanIn) ctl(op, fd int, ev *unix.EpollEvent) error {
	return controlErr(f.rc, func(efd int) error { return unix.EpollCtl(efd, op, fd, ev) })
}

// accept waits until a watched socket has a connection in its accept
// queue, accepts it and judges it with the listener's lock read-held, so
// that no key change runs between accept(2) and the judgement; or returns
// a connection judged during a key change. Past the deadline it fails
// with os.ErrDeadlineExceeded, once closed with net.ErrClosed.
//
// The queues are read with the lock held, so a socket epoll reports ready
// stays so until the accept: a key change that drains it waits for the
// lock.
func (f *fanIn) accept() (accepted, error) {
	f.turnMu.Lock()
	defer f.turnMu.Unlock()
	err := f.rc.Read(f.step)
	t := f.turn
	f.turn = turn{}
	switch {
	case f.closed.Load():
		t.a.close()
		return accepted{}, net.ErrClosed
	case err != nil:
		t.a.close()
		return accepted{}, err
	}
	return t.a, t.err
}

// try is one look at the instance for accept: it reports whether it found
// something, a connection or an error, and leaves it in f.turn.
func (f *fanIn) try(efd uintptr) bool {
	var ok bool
	if f.turn.a, ok = f.popPending(); ok {
		return true
	}
	if f.locking != nil {
		f.locking()
	}
	f.lock.RLock()
	defer f.lock.RUnlock()
	var events [32]unix.EpollEvent
	n, _ := unix.EpollWait(int(efd), events[:], 0)
	for _, ev := range events[:max(n, 0)] {
		if ev.Fd == int32(f.wake) {
			var b [8]byte
			_, _ = unix.Read(f.wake, b[:])
			if f.turn.a, ok = f.popPending(); ok {
				return true
			}
			continue
		}
		f.mu.Lock()
		s := f.shards[ev.Fd]
		f.mu.Unlock()
		if s == nil || s.closed.Load() || ev.Events&unix.EPOLLIN == 0 {
			continue // a socket no longer watched, or no connection in its queue
		}
		c, err := s.accept()
		if err != nil {
			f.turn.err = err
			return true
		}
		f.turn.a = f.judge(s, c)
		return true
	}
	return false
}

// push gives Accept connections judged during a key change.
func (f *fanIn) push(judged []accepted) {
	f.mu.Lock()
	f.pending = append(f.pending, judged...)
	f.npending.Store(int32(len(f.pending)))
	f.mu.Unlock()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(f.wake, one[:])
}

// popPending takes the oldest pending connection.
func (f *fanIn) popPending() (accepted, bool) {
	if f.npending.Load() == 0 { // push stores it before it wakes an accept
		return accepted{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) == 0 {
		return accepted{}, false
	}
	a := f.pending[0]
	f.pending[0] = accepted{}
	f.pending = f.pending[1:]
	f.npending.Store(int32(len(f.pending)))
	return a, true
}

// setDeadline sets the deadline of accept.
func (f *fanIn) setDeadline(t time.Time) { _ = f.poll.SetReadDeadline(t) }

// close ends every accept, now and later, and closes the pending
// connections.
func (f *fanIn) close() {
	if f.closed.Swap(true) {
		return
	}
	_ = f.poll.Close() // waits for an accept's callback in progress
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.wake >= 0 {
		_ = unix.Close(f.wake)
	}
	for _, a := range f.pending {
		a.close()
	}
	f.pending = nil
	f.npending.Store(0)
}
