package tcpmd5_test

import (
	"context"
	"net"
	"net/netip"
	"os"
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
// (and so over the group's sockets), because each new peer address costs
// the kernel per-peer state of its own whatever the keys: "peers=5000"
// beside the largest group shows that cost apart from the group's, and
// "prefix" beside it is one key covering the same peers: what 100,000 host
// keys cost a handshake.
// Each run has its own network namespace.
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
	runs = append(runs, run{100000, "group", 5000}, run{100000, "prefix", 5000})
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
