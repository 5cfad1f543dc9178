package tcpmd5prom_test

import (
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/metrics"
	"github.com/tcplowlevel/tcpmd5/tcpmd5prom"
)

// TestCollectorOnAListener, in a network namespace of its own: a Listener
// whose OnRefuse is the Set's refuses an unsigned peer no key covers, and
// the registry's series for that peer reads 1. The registry gathers from
// goroutines of its own, so the kernel's counters it serves are those of
// the process's network namespace, not this test's: it must serve them.
func TestCollectorOnAListener(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.Netns(t)
	var set metrics.Set
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(tcpmd5prom.New(&set)))
	lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.0.0.2", testkit.SecretA)}, OnRefuse: set.Refused}
	ln := testkit.Listen(t, lc, "tcp4", "127.0.0.1:0")
	testkit.ServeEcho(t, ln)
	testkit.RequireResetByPolicy(t, ln, testkit.Dialer("127.0.0.3"), ln.Addr().String())
	testkit.DropDial(t, testkit.Dialer("127.0.0.2", testkit.Key(t, "127.0.0.1", testkit.SecretB)), "tcp4", ln.Addr().String(), netstat.MD5Failure)

	families, err := reg.Gather()
	require.NoError(t, err)
	got := make(map[string]float64)
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += " " + l.GetName() + "=" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	local := ln.Addr().(*net.TCPAddr).AddrPort().String()
	assert.Equal(t, 1.0, got["tcpmd5_refused_connections_total local="+local+" reason=no-key remote=127.0.0.3"], "%v", got)
	for _, name := range netstat.MD5Counters {
		_, ok := got["tcpmd5_netstat_total counter="+name]
		assert.True(t, ok, "no series for %s", name)
	}
	assert.Equal(t, 1, testutil.CollectAndCount(tcpmd5prom.New(&set), "tcpmd5_refused_connections_total"))
}
