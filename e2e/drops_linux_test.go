package e2e_test

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// badSYN returns a SYN from src to dst signed with an MD5 option whose
// digest is garbage: a listener that holds a key for src drops it as a
// mismatch.
func badSYN(src, dst netip.AddrPort, seq uint32) testnet.Segment {
	opt := make([]byte, 20)
	opt[0], opt[1] = 19, 18 // kind, length; 16 bytes of digest, then two NOPs
	for i := 2; i < 18; i++ {
		opt[i] = byte(seq >> (i % 4 * 8))
	}
	opt[18], opt[19] = 1, 1
	return testnet.Segment{Src: src, Dst: dst, Seq: seq, Flags: testnet.SYN, Window: 64240, RawOptions: opt}
}

// floodTarget makes, in a network namespace of the test's own, a listener
// with a key for all of 127.0.0.0/8, a DropWatcher for its port and a raw
// socket to send it bad SYNs; t's cleanup closes them.
func floodTarget(t testing.TB) (netip.AddrPort, *drops.Watcher, *testnet.RawSocket) {
	t.Helper()
	testenv.Netns(t)
	ln := testkit.Listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.0.0.0/8", testkit.SecretA)}}, "tcp4", "127.0.0.1:0")
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	w, err := drops.Watch(drops.Filter{Port: dst.Port()})
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	raw, err := testnet.NewRawSocket()
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	return dst, w, raw
}

// tallying reads w into a tally.Tally until stop is called; counts returns
// what it holds now.
func tallying(t testing.TB, w *drops.Watcher) (counts func() (total uint64, peers []tally.Peer), stop func()) {
	var mu sync.Mutex
	var tl tally.Tally
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ds, err := w.Read(ctx)
			if ctx.Err() != nil {
				return
			}
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			for _, d := range ds {
				tl.Add(d)
			}
			mu.Unlock()
		}
	}()
	return func() (uint64, []tally.Peer) {
			mu.Lock()
			defer mu.Unlock()
			return tl.Total(), tl.Peers()
		}, func() {
			cancel()
			<-done
		}
}

// TestDropFlood sends 100,000 SYNs with bad signatures from 1,000 spoofed
// sources to a keyed listener, once read as they come and once read only
// after the flood, when the kernel's ring buffers overflowed. Every drop is
// accounted for: the per-peer counts plus the events the kernel could not
// report equal what TCPMD5Failure moved; no peer is invented; and the
// watcher's memory stays bounded however many drops pass through it.
func TestDropFlood(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.Require(t, testenv.Tracepoints)
	t.Run("read during", func(t *testing.T) { dropFlood(t, true) })
	t.Run("read after", func(t *testing.T) { dropFlood(t, false) })
}

func dropFlood(t *testing.T, readDuring bool) {
	const syns, sources = 100_000, 1_000
	dst, w, raw := floodTarget(t)

	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	var counts func() (uint64, []tally.Peer)
	var stop func()
	if readDuring {
		counts, stop = tallying(t, w)
	}
	before := testkit.Counters(t)
	for i := range syns {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i % sources / 256), byte(i % sources % 256)}), uint16(20000+i%30000))
		require.NoError(t, raw.Send(badSYN(src, dst, uint32(i))))
	}
	if !readDuring {
		counts, stop = tallying(t, w)
	}
	// The kernel reports a lost count at its next write to the ring: once
	// the flood's drops are read, single SYNs flush it.
	counted := func() uint64 { n, _ := counts(); return n + w.Lost() }
	moved := func() uint64 { return before.Delta(testkit.Counters(t), netstat.MD5Failure)[netstat.MD5Failure] }
	deadline := time.Now().Add(time.Minute)
	for i := 0; counted() != moved() && time.Now().Before(deadline); i++ {
		time.Sleep(100 * time.Millisecond)
		if i%5 == 4 {
			require.NoError(t, raw.Send(badSYN(netip.MustParseAddrPort("127.2.0.1:1"), dst, uint32(i))))
		}
	}
	stop()
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)

	reported, peers := counts()
	total := moved()
	require.GreaterOrEqual(t, total, uint64(syns), "the kernel dropped every bad SYN")
	assert.Equal(t, total, reported+w.Lost(), "per-peer counts (%d) and lost events (%d) add up to TCPMD5Failure", reported, w.Lost())
	assert.LessOrEqual(t, len(peers), sources+1, "no peer invented")
	if !readDuring {
		assert.Positive(t, w.Lost(), "the rings overflowed while nobody read them")
	}
	for _, p := range peers {
		assert.Equal(t, drops.MD5Mismatch, p.Reason)
		assert.Equal(t, dst, p.Local)
		assert.True(t, netip.MustParsePrefix("127.0.0.0/14").Contains(p.Remote.Addr()), "%v", p.Remote)
	}
	grew := int64(m1.HeapInuse) - int64(m0.HeapInuse)
	t.Logf("%d drops: %d reported for %d peers, %d lost; heap grew by %d KiB", total, reported, len(peers), w.Lost(), grew/1024)
	assert.Less(t, grew, int64(32<<20), "the watcher's memory is bounded")
}

// BenchmarkWatchDrops measures how many drops a second a DropWatcher reads
// while the kernel drops bad SYNs as fast as one sender makes them, and
// what share it could not report.
func BenchmarkWatchDrops(b *testing.B) {
	testkit.RequireMD5(b)
	testenv.Require(b, testenv.Tracepoints)
	dst, w, raw := floodTarget(b)
	counts, stop := tallying(b, w)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), uint16(20000+i%30000))
		if err := raw.Send(badSYN(src, dst, uint32(i))); err != nil {
			b.Fatal(err)
		}
	}
	for n, _ := counts(); n+w.Lost() < uint64(b.N) && time.Since(start) < time.Minute; n, _ = counts() {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	stop()
	reported, _ := counts()
	b.ReportMetric(float64(reported)/elapsed.Seconds(), "drops/s")
	b.ReportMetric(float64(w.Lost())/float64(b.N), "lost/op")
}
