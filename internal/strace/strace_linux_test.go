package strace

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestCount: strace counts the calls made while f runs, by this thread or
// another, and none made before.
func TestCount(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for range 5 {
		_, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	}
	n := Count(t, func() {
		for range 7 {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 3 {
				_, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
			}
		}()
		<-done
	}, "setsockopt", "getsockopt")
	if n["setsockopt"] != 7 || n["getsockopt"] != 3 {
		t.Fatalf("strace counted %v; want 7 setsockopt and 3 getsockopt", n)
	}
}
