//go:build !amd64 && !arm64

package main_test

import (
	"fmt"
	"os"
)

const seccompUnavailable = 3

// seccompHelper has no filter for this architecture, whose setsockopt may
// go through socketcall(2).
func seccompHelper(string) {
	fmt.Fprintln(os.Stderr, "the seccomp filter of this test is written for amd64 and arm64")
	os.Exit(seccompUnavailable)
}
