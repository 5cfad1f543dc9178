package tcpmd5_test

import (
	"context"
	"crypto/md5"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tcplowlevel/tcpmd5/internal/bench"
)

// The benchmarks measure plain TCP, TCP with MD5 through this package and TCP
// with MD5 set by hand through x/sys side by side, over loopback in
// 127.6.0.0/16. For ratios that mean something on a busy machine, run them
// several times and compare with benchstat, or use cmd/tcpmd5-bench, which
// interleaves the variants:
//
//	go test -run '^$' -bench . -benchtime 200ms -count 5 | tee bench.txt

func benchVariants(b *testing.B, names ...string) []bench.Variant {
	b.Helper()
	requireMD5(b)
	if len(names) == 0 {
		names = bench.VariantNames
	}
	vs, err := bench.Variants(names...)
	if err != nil {
		b.Fatal(err)
	}
	return vs
}

// serveBench listens with v and n keys, answers as the bench package's
// clients expect, and stops when b ends.
func serveBench(b *testing.B, v bench.Variant, n int) bench.Listener {
	b.Helper()
	ln, err := v.Listen(bench.ListenerKeys(n))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bench.Serve(ln))
	return ln
}

// keysFor is the smallest number of keys with which v's client connects.
func keysFor(v bench.Variant) int {
	if v.Name == bench.Plain {
		return 0
	}
	return 1
}

// roundTrips sets up connections to ln with v, one an iteration, and
// reports the rate.
func roundTrips(b *testing.B, v bench.Variant, ln net.Listener) {
	addr := ln.Addr().String()
	ctx := context.Background()
	n := 0
	for b.Loop() {
		if _, err := bench.RoundTrip(ctx, v.Dial, addr); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "conns/s")
}

// BenchmarkSetup measures one connection set-up: dial, accept, a round trip
// of one byte, close (with a reset, so no port stays in TIME_WAIT).
func BenchmarkSetup(b *testing.B) {
	for _, v := range benchVariants(b) {
		b.Run(v.Name, func(b *testing.B) {
			roundTrips(b, v, serveBench(b, v, keysFor(v)))
		})
	}
}

// BenchmarkThroughput measures bulk transfer over 1 and 8 connections at
// once, 256 KiB a write; the clock stops when the server has read every byte.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 256 << 10
	for _, v := range benchVariants(b) {
		for _, conns := range []int{1, 8} {
			b.Run(v.Name+"/conns="+itoa(conns), func(b *testing.B) {
				addr := serveBench(b, v, keysFor(v)).Addr().String()
				cs := make([]*net.TCPConn, conns)
				for i := range cs {
					c, err := bench.StartBulk(context.Background(), v, addr)
					if err != nil {
						b.Fatal(err)
					}
					cs[i] = c
				}
				buf := make([]byte, chunk)
				b.SetBytes(chunk)
				b.ResetTimer()
				var left atomic.Int64
				left.Store(int64(b.N))
				var wg sync.WaitGroup
				errs := make([]error, conns)
				for i, c := range cs {
					wg.Go(func() {
						var sent int64
						for left.Add(-1) >= 0 {
							n, err := c.Write(buf)
							sent += int64(n)
							if err != nil {
								errs[i] = err
								c.Close()
								return
							}
						}
						errs[i] = bench.FinishBulk(c, sent)
					})
				}
				wg.Wait()
				b.StopTimer()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSetKey measures adding one key to a listener holding 10, 100 and
// 900 keys, for which the kernel walks its whole list, and removing it
// again, so that the number of keys stays the same: one iteration is a
// SetKey and a RemoveKey. cmd/tcpmd5-bench times the SetKey alone.
func BenchmarkSetKey(b *testing.B) {
	vs := benchVariants(b, bench.TCPMD5, bench.XSys)
	for _, n := range bench.SetKeyCounts {
		for _, v := range vs {
			b.Run("keys="+itoa(n)+"/"+v.Name, func(b *testing.B) {
				ln, err := v.Listen(bench.ListenerKeys(n))
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				for b.Loop() {
					if err := ln.SetKey(bench.ExtraKey); err != nil {
						b.Fatal(err)
					}
					if err := ln.RemoveKey(bench.ExtraKey); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkAccept measures the connection rate of a listener against the
// keys it holds: each SYN and handshake ACK makes the kernel look the peer
// up among them.
func BenchmarkAccept(b *testing.B) {
	vs := benchVariants(b)
	for _, v := range vs {
		if v.Name == bench.Plain {
			b.Run("keys=0/"+v.Name, func(b *testing.B) {
				roundTrips(b, v, serveBench(b, v, 0))
			})
		}
	}
	for _, n := range bench.AcceptCounts {
		for _, v := range vs {
			if v.Name == bench.Plain {
				continue
			}
			b.Run("keys="+itoa(n)+"/"+v.Name, func(b *testing.B) {
				roundTrips(b, v, serveBench(b, v, n))
			})
		}
	}
}

// BenchmarkMD5 is the physical limit beside the others: crypto/md5 over 64
// KiB, about one loopback segment, on one core. Each signed byte is hashed
// twice, by the sender and by the receiver.
func BenchmarkMD5(b *testing.B) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	var sum [md5.Size]byte
	for b.Loop() {
		sum = md5.Sum(buf)
	}
	_ = sum
}
