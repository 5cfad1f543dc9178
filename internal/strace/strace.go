// Package strace counts the system calls a test's own process makes while
// a function runs, as strace(1) sees them from outside: the figure a
// benchmark reports per operation is the kernel's, not the code's own
// account of itself.
package strace

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// Count runs f with strace attached to every thread of this process and
// returns how many times each of calls was made meanwhile, by any thread.
// It skips tb (fails it under CI) when strace is not installed.
func Count(tb testing.TB, f func(), calls ...string) map[string]int {
	tb.Helper()
	path := testenv.RequireTool(tb, "strace", "strace")
	out, err := os.CreateTemp(tb.TempDir(), "strace")
	if err != nil {
		tb.Fatal(err)
	}
	out.Close()
	cmd := exec.Command(path, "-f", "-c", "-o", out.Name(), "-e", "trace="+strings.Join(calls, ","), "-p", strconv.Itoa(os.Getpid()))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	// strace says "Process N attached with M threads" on standard error
	// once it holds them all.
	attached := make(chan struct{})
	go func(signal chan struct{}) {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "attached") && signal != nil {
				close(signal)
				signal = nil
			}
		}
	}(attached)
	select {
	case <-attached:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		tb.Fatal("strace did not attach to this process in a minute")
	}
	f()
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil && !isInterrupt(err) {
		tb.Fatalf("strace: %v", err)
	}
	summary, err := os.ReadFile(out.Name())
	if err != nil {
		tb.Fatal(err)
	}
	return parse(tb, summary, calls)
}

// isInterrupt reports an exit by the SIGINT Count sends.
func isInterrupt(err error) bool {
	ee, ok := err.(*exec.ExitError)
	return ok && !ee.Success()
}

// parse reads strace -c's table: % time, seconds, usecs/call, calls,
// [errors,] syscall.
func parse(tb testing.TB, summary []byte, calls []string) map[string]int {
	tb.Helper()
	n := map[string]int{}
	for _, c := range calls {
		n[c] = 0
	}
	for line := range bytes.Lines(summary) {
		f := strings.Fields(string(line))
		if len(f) < 5 {
			continue
		}
		if _, want := n[f[len(f)-1]]; !want {
			continue
		}
		v, err := strconv.Atoi(f[3])
		if err != nil {
			tb.Fatalf("strace's summary: %q: %v", line, err)
		}
		n[f[len(f)-1]] = v
	}
	return n
}
