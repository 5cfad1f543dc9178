package tcpmd5

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestKeyChainHoldsNoClosedConnection, in a network namespace of its own: a
// chain on a listener and a dialer sees 100,000 connections (5,000 with
// -short) opened, used and closed, a few at a time; the connections it
// keeps never number more than a few hundred, once Sessions has looked
// none, and the heap has grown by less than 40 bytes a connection (a
// session held takes several times that).
func TestKeyChainHoldsNoClosedConnection(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	conns, workers := 100000, 4
	if testing.Short() {
		// tools/kernels/run passes -test.short: inside UML a connection
		// costs 3 ms, and what the chain holds does not depend on the
		// kernel, so there the test sees 5,000.
		conns = 5000
	}
	chain := NewKeyChain()
	require.NoError(t, chain.SetKey(Key{Peer: netip.MustParsePrefix("127.0.0.0/8"), Secret: fakeA}, time.Time{}))
	ln, err := (&ListenConfig{KeyChain: chain}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var most atomic.Int64
	enter := testenv.Here(t)
	dial := func(w int) error { // connections w, w+workers, ...
		if err := enter(); err != nil {
			return err
		}
		buf := make([]byte, 4)
		for i := w; i < conns; i += workers {
			d := Dialer{KeyChain: chain}
			d.Timeout = 30 * time.Second
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, byte(2+i/60000), byte(i/250%240), byte(1+i%250))}
			c, err := d.Dial("tcp4", ln.Addr().String())
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			_, err = c.Write([]byte("Ping"))
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			chain.mu.Lock()
			n := int64(len(chain.sessions))
			chain.mu.Unlock()
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() { errs[w] = dial(w) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	assert.Less(t, most.Load(), int64(1000), "the chain kept %d connections at once, while at most a few were open", most.Load())
	require.Eventually(t, func() bool {
		_ = chain.Sessions()
		chain.mu.Lock()
		defer chain.mu.Unlock()
		return len(chain.sessions) == 0
	}, 30*time.Second, 20*time.Millisecond, "closed connections stay in the chain")
	after := heap()
	grown := int64(after) - int64(before)
	assert.Less(t, grown, int64(40*conns), "the heap grew by %d bytes over %d connections", grown, conns)
	t.Logf("%d connections: the chain kept at most %d at once and none at the end; heap %d bytes before, %d after", conns, most.Load(), before, after)
}
