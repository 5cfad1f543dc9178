package testnet

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// BIRD is a BIRD 2 daemon running in the foreground inside a host.
type BIRD struct {
	log  syncBuffer
	done chan struct{}
}

// StartBIRD runs bird -f inside h with config as its configuration, its
// control socket in a directory of its own, and its log on stderr kept for
// the test's failure message. The daemon is killed, and waited for, when t
// ends. StartBIRD skips t, or fails it under CI, if bird is not installed.
func StartBIRD(t testing.TB, h *Host, config string) *BIRD {
	t.Helper()
	testenv.RequireTool(t, "bird", "bird2")
	dir, err := os.MkdirTemp("", "md5t-bird") // short: a unix socket path holds 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &BIRD{done: make(chan struct{})}
	cmd := h.Command("bird", "-f", "-c", cfg, "-s", filepath.Join(dir, "bird.ctl"))
	cmd.Stdout, cmd.Stderr = &b.log, &b.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("testnet: starting bird in %s: %v", h.Name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-b.done
		if t.Failed() {
			t.Logf("bird in %s logged:\n%s", h.Name, b.Log())
		}
	})
	return b
}

// Log returns what the daemon has logged so far.
func (b *BIRD) Log() string { return b.log.String() }

// Exited reports whether the daemon has exited, waiting at most d.
func (b *BIRD) Exited(d time.Duration) bool {
	select {
	case <-b.done:
		return true
	case <-time.After(d):
		return false
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
