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
