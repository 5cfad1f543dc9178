package testenv

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Netns moves the calling goroutine, locked to its thread for good, into a
// new network namespace with only the loopback interface, up. Sockets the
// goroutine makes from then on live there, and so do the counters of
// /proc/thread-self/net: a test can assert which drop counter moved without
// other tests' traffic getting in the way. When the goroutine ends, its
// thread and with it the namespace go away.
//
// Goroutines that t.Run or go statements start are not in the namespace:
// make sockets on this goroutine, or call Netns in each subtest.
func Netns(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	runtime.LockOSThread() // never unlocked: the thread must not go back to the pool
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		Missing(t, "cannot make a network namespace: "+err.Error(), "run as root with CAP_SYS_ADMIN, outside a sandbox that forbids unshare(2)")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket in the new namespace: %v", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatalf("reading lo's flags: %v", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatalf("bringing lo up: %v", err)
	}
}

// Here returns a function that moves the goroutine that calls it into the
// network namespace of the goroutine that called Here (one that Netns put
// in a namespace of its own), for good: its thread stays locked, and goes
// away when the goroutine ends. Goroutines a test starts call it first to
// make sockets in the test's namespace.
func Here(t testing.TB) func() error {
	t.Helper()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening this thread's network namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() error {
		runtime.LockOSThread() // never unlocked: the thread must not go back to the pool
		return unix.Setns(fd, unix.CLONE_NEWNET)
	}
}
