//go:build !linux

package testenv

import "testing"

// Netns skips t, or fails it under CI: network namespaces are Linux's.
func Netns(t testing.TB) {
	t.Helper()
	Missing(t, "network namespaces exist on Linux only", "run the test on Linux")
}
