package e2e_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

// TestLoad runs 200 signed sessions that move data through an echo server
// for a bounded time while keys are added to and removed from the listener,
// and new signed sessions keep arriving. Every byte must come back
// unchanged, every new session must connect, and the kernel must drop no
// segment for its signature.
func TestLoad(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	const (
		sessions = 200
		runFor   = time.Second
	)
	ln := testkit.Listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.4.0.0/16", testkit.SecretA)}}, "tcp4", "127.0.0.1:0")
	testkit.ServeEcho(t, ln)
	addr := ln.Addr().String()
	server := testkit.Key(t, "127.0.0.1", testkit.SecretA)
	before := testkit.Counters(t)

	conns := make([]net.Conn, sessions)
	for i := range conns {
		c, err := testkit.Dialer(fmt.Sprintf("127.4.%d.%d", 3+i/250, 1+i%250), server).Dial("tcp", addr)
		require.NoError(t, err, "session %d", i)
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}

	stop := time.Now().Add(runFor)
	var wg sync.WaitGroup
	moved := make([]int64, sessions)
	errs := make(chan error, sessions+1)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 2385))
			out := make([]byte, 16<<10)
			in := make([]byte, len(out))
			for first := true; first || time.Now().Before(stop); first = false { // one round trip at least, however loaded the machine
				n := 1 + rng.IntN(len(out))
				for j := range out[:n] {
					out[j] = byte(rng.Uint32())
				}
				if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
					errs <- err
					return
				}
				if _, err := c.Write(out[:n]); err != nil {
					errs <- fmt.Errorf("session %d: write: %w", i, err)
					return
				}
				if _, err := io.ReadFull(c, in[:n]); err != nil {
					errs <- fmt.Errorf("session %d: read after %d bytes: %w", i, moved[i], err)
					return
				}
				if !bytes.Equal(out[:n], in[:n]) {
					errs <- fmt.Errorf("session %d: %d bytes came back changed after %d bytes", i, n, moved[i])
					return
				}
				moved[i] += int64(n)
			}
		}()
	}

	// Key churn on the live listener: a prefix that overlaps the sessions'
	// with the same secret, and hosts outside them with another.
	var churn atomic.Int64
	overlap := testkit.Key(t, "127.4.3.0/24", testkit.SecretA)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; time.Now().Before(stop); n++ {
			other := tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 4, 200, byte(n)}), 32), Secret: []byte(testkit.SecretB)}
			for _, op := range []func() error{
				func() error { return ln.SetKey(other) },
				func() error { return ln.SetKey(overlap) },
				func() error { return ln.RemoveKey(other) },
				func() error { return ln.RemoveKey(overlap) },
			} {
				if err := op(); err != nil {
					errs <- fmt.Errorf("key churn: %w", err)
					return
				}
				churn.Add(1)
			}
		}
	}()

	// New sessions during the churn, from this goroutine, which is in the
	// test's namespace.
	dials := 0
	for ; time.Now().Before(stop); dials++ {
		c, err := testkit.Dialer(fmt.Sprintf("127.4.%d.%d", 10+dials/250, 1+dials%250), server).Dial("tcp", addr)
		require.NoError(t, err, "new session %d during key churn", dials)
		testkit.Ping(t, c)
		c.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var total int64
	for i, n := range moved {
		assert.Positive(t, n, "session %d moved no data", i)
		total += n
	}
	drops := before.Delta(testkit.Counters(t), netstat.MD5Counters...)
	for _, n := range netstat.MD5Counters {
		assert.Zero(t, drops[n], "%s moved under load", n)
	}
	assert.Equal(t, []tcpmd5.Key{testkit.Key(t, "127.4.0.0/16", testkit.SecretA)}, ln.Keys())
	t.Logf("%d sessions echoed %d MiB in %v; %d key changes and %d new sessions meanwhile",
		sessions, total>>20, runFor, churn.Load(), dials)
}
