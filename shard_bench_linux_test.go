package tcpmd5_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// BenchmarkAcceptRate measures signed handshakes, dial to Accept, against a
// listener holding keys for many peers. The kernel scans a socket's keys on
// every lookup, so the cost grows with the keys on one socket: "single"
// keeps them all on one socket (its network namespace's net.core.optmem_max
// raised where they do not fit), "group" is a Listener, which spreads them
// over a reuseport group at the default optmem_max. Compare the two at each
// size: the ratio is what the group saves; compare one kind across sizes:
// the ratio is what the keys cost.
//
// Every size dials from the same number of peers, 10, spread over its keys
// (and so over the group's sockets). Each run has its own network
// namespace. BenchmarkAcceptRateHostKeys measures many peers against a
// prefix key side by side.
func BenchmarkAcceptRate(b *testing.B) {
	requireMD5(b)
	type run struct {
		keys  int
		kind  string
		peers int
	}
	var runs []run
	for _, keys := range []int{10, 900, 10000, 100000} {
		for _, kind := range []string{"single", "group"} {
			runs = append(runs, run{keys, kind, 10})
		}
	}
	for _, r := range runs {
		keys, kind := r.keys, r.kind
		name := "keys=" + strconv.Itoa(keys) + "/" + kind
		if r.peers != 10 {
			name += "/peers=" + strconv.Itoa(r.peers)
		}
		b.Run(name, func(b *testing.B) {
			testenv.Netns(b)
			addr := func(n int) netip.Addr { return peer4(0, n) }
			var ln net.Listener
			secret := peerSecret
			switch kind {
			case "single":
				ln = singleSocket(b, peerKeys(addr, 0, keys))
			case "group":
				ln = listen(b, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, keys)}, "tcp4", "127.0.0.1:0")
			case "prefix": // one key for the same peers, 127.32.0.0/15
				prefix := []byte("fake-secret-prefix")
				secret = func(int) []byte { return prefix }
				cover, err := addr(0).Prefix(15)
				require.NoError(b, err)
				require.True(b, cover.Contains(addr(keys-1)))
				ln = listen(b, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{{Peer: cover, Secret: prefix}}}, "tcp4", "127.0.0.1:0")
			}
			acceptedc := make(chan struct{})
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
					acceptedc <- struct{}{}
				}
			}()
			target := ln.Addr().String()
			n := 0
			start := time.Now()
			for b.Loop() {
				p := n % r.peers * (keys / r.peers)
				c, err := dialAs(context.Background(), addr(p), secret(p), target, 5*time.Second, nil)
				if err != nil {
					b.Fatal(err)
				}
				<-acceptedc
				closeReset(c)
				n++
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "accepts/s")
			b.ReportMetric(float64(listeningSockets(b, port(ln))), "sockets")
		})
	}
}

// singleSocket returns a plain listener with every key on its one socket,
// raising net.core.optmem_max of the calling goroutine's network namespace
// if they need more than it allows.
func singleSocket(b *testing.B, keys []tcpmd5.Key) *net.TCPListener {
	b.Helper()
	const optmem = "/proc/sys/net/core/optmem_max"
	if need := len(keys) * 200; need > 131072 {
		if err := os.WriteFile(optmem, []byte(strconv.Itoa(need)), 0); err != nil {
			testenv.Missing(b, "cannot raise net.core.optmem_max in a network namespace (per namespace since Linux 6.9): "+err.Error(), "run the benchmark as root on Linux 6.9 or later")
		}
	}
	tl := plainListener(b, "127.0.0.1:0", nil)
	require.NoError(b, tcpmd5.SetKeys(tl, keys...))
	return tl
}

// BenchmarkAcceptRateHostKeys measures what 100,000 host keys cost a
// handshake: a Listener holding a key for each of 100,000 peers beside one
// holding a single prefix key that covers the same peers, in one network
// namespace, each dialled from the same sequence of 5,000 distinct peers
// (every new peer address costs the kernel per-peer state whatever the
// keys). The two take turns by blocks of connections, so that what else
// the machine does falls on both alike, and each pair of blocks gives one
// ratio; "group/prefix" is their median, the accept rates are each one's
// over the whole run.
func BenchmarkAcceptRateHostKeys(b *testing.B) {
	requireMD5(b)
	const keys, peers, block = 100000, 5000, 250
	testenv.Netns(b)
	addr := func(n int) netip.Addr { return peer4(0, n) }
	cover, err := addr(0).Prefix(15)
	require.NoError(b, err)
	require.True(b, cover.Contains(addr(keys-1)))
	prefixSecret := []byte("fake-secret-prefix")
	type side struct {
		ln     net.Listener
		secret func(int) []byte
		n      int           // connections made
		spent  time.Duration // in all of them
	}
	sides := [2]*side{
		{ln: listen(b, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, keys)}, "tcp4", "127.0.0.1:0"), secret: peerSecret},
		{ln: listen(b, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{{Peer: cover, Secret: prefixSecret}}}, "tcp4", "127.0.0.1:0"), secret: func(int) []byte { return prefixSecret }},
	}
	acceptedc := make(chan struct{})
	for _, s := range sides {
		go func() {
			for {
				c, err := s.ln.Accept()
				if err != nil {
					return
				}
				c.Close()
				acceptedc <- struct{}{}
			}
		}()
	}
	var ratios []float64
	var blockTime [2]time.Duration
	i := 0
	for b.Loop() {
		s := sides[i/block%2]
		p := s.n % peers * (keys / peers)
		start := time.Now()
		c, err := dialAs(context.Background(), addr(p), s.secret(p), s.ln.Addr().String(), 5*time.Second, nil)
		if err != nil {
			b.Fatal(err)
		}
		<-acceptedc
		closeReset(c)
		took := time.Since(start)
		s.n++
		s.spent += took
		blockTime[i/block%2] += took
		if i++; i%(2*block) == 0 {
			ratios = append(ratios, float64(blockTime[1])/float64(blockTime[0]))
			blockTime = [2]time.Duration{}
		}
	}
	for _, s := range sides {
		if s.n == 0 {
			b.Fatal("no connection made")
		}
	}
	b.ReportMetric(float64(sides[0].n)/sides[0].spent.Seconds(), "group-accepts/s")
	b.ReportMetric(float64(sides[1].n)/sides[1].spent.Seconds(), "prefix-accepts/s")
	if len(ratios) > 0 {
		slices.Sort(ratios)
		b.ReportMetric(ratios[len(ratios)/2], "group/prefix")
	}
	b.ReportMetric(float64(listeningSockets(b, port(sides[0].ln))), "sockets")
}

// BenchmarkSetKeyGrowth measures how long a live SetKey holds the
// listener, and Accept with it, while host keys arrive one by one and the
// group grows from one socket to a few hundred: the longest call and the
// 99th percentile, beside 0 and 100 prefix keys, which every new socket
// takes too. Run it with -benchtime 1x: one iteration adds 20,000 keys.
func BenchmarkSetKeyGrowth(b *testing.B) {
	requireMD5(b)
	const hosts = 20000
	for _, prefixes := range []int{0, 100} {
		b.Run("prefixes="+strconv.Itoa(prefixes), func(b *testing.B) {
			testenv.Netns(b)
			addr := func(n int) netip.Addr { return peer4(0, n) }
			var took []time.Duration
			sockets := 0
			for b.Loop() {
				var keys []tcpmd5.Key
				for i := range prefixes { // 127.60.0.0/16, apart from the hosts
					keys = append(keys, tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 60, byte(i), 0}), 24), Secret: []byte("fake-secret-prefix")})
				}
				ln := listen(b, &tcpmd5.ListenConfig{Keys: keys}, "tcp4", "127.0.0.1:0")
				for _, k := range peerKeys(addr, 0, hosts) {
					start := time.Now()
					if err := ln.SetKey(k); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(start))
				}
				sockets = listeningSockets(b, port(ln))
				ln.Close()
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(sockets), "sockets")
		})
	}
}
