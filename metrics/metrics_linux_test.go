package metrics_test

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/metrics"
)

// value returns the sample of family f with labels, and whether there is
// one.
func value(s *metrics.Set, f string, labels ...string) (float64, bool) {
	for i, samples := range s.Gather() {
		if metrics.Families[i].Name != f {
			continue
		}
		for _, sm := range samples {
			if slices.Equal(labels, sm.Labels) {
				return sm.Value, true
			}
		}
	}
	return 0, false
}

// TestWatchDropsAndRefusals, in a network namespace of its own: a peer
// with another secret is counted under its address and md5-mismatch, as
// many times as TCPMD5Failure moved; an unsigned peer no key covers is
// counted as refused, no-key, as the Listener counted it; the kernel's
// counter is served as the kernel has it; once stopped, watched is 0.
func TestWatchDropsAndRefusals(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.Require(t, testenv.Tracepoints)
	testenv.Netns(t)
	var s metrics.Set
	lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.0.0.2", testkit.SecretA)}, OnRefuse: s.Refused}
	ln := testkit.Listen(t, lc, "tcp4", "127.0.0.1:0")
	testkit.ServeEcho(t, ln)
	port := ln.Addr().(*net.TCPAddr).Port
	stop, err := s.WatchDrops(drops.Filter{Port: uint16(port)})
	require.NoError(t, err)
	defer stop()
	watched, _ := value(&s, "tcpmd5_drop_events_watched")
	assert.Equal(t, 1.0, watched)

	before := testkit.Counters(t)
	testkit.DropDial(t, testkit.Dialer("127.0.0.2", testkit.Key(t, "127.0.0.1", testkit.SecretB)), "tcp4", ln.Addr().String(), netstat.MD5Failure)
	moved := before.Delta(testkit.Counters(t), netstat.MD5Failure)[netstat.MD5Failure]
	testkit.RequireResetByPolicy(t, ln, testkit.Dialer("127.0.0.3"), ln.Addr().String())

	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String()
	require.Eventually(t, func() bool {
		n, _ := value(&s, "tcpmd5_dropped_segments_total", "127.0.0.2", local, "md5-mismatch")
		return n == float64(moved)
	}, testkit.MustConnect, 20*time.Millisecond, "the drops of 127.0.0.2 never reached %d, as TCPMD5Failure moved", moved)
	n, ok := value(&s, "tcpmd5_refused_connections_total", "127.0.0.3", local, "no-key")
	assert.True(t, ok, "no series for the refused peer")
	assert.Equal(t, float64(ln.RefusedUnsigned()), n)
	kernel, ok := value(&s, "tcpmd5_netstat_total", netstat.MD5Failure)
	require.True(t, ok)
	assert.Equal(t, float64(testkit.Counters(t)[netstat.MD5Failure]), kernel)
	_, ok = value(&s, "tcpmd5_dropped_segments_total", "127.0.0.3", local, "md5-missing")
	assert.False(t, ok, "an unsigned peer no key covers is let in by the kernel, not dropped")

	stop()
	watched, _ = value(&s, "tcpmd5_drop_events_watched")
	assert.Equal(t, 0.0, watched, "stopped, yet watched")
	after, _ := value(&s, "tcpmd5_dropped_segments_total", "127.0.0.2", local, "md5-mismatch")
	assert.Equal(t, float64(moved), after, "stopping forgets nothing counted")
}
