package tcpmd5prom_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/metrics"
	"github.com/tcplowlevel/tcpmd5/tcpmd5prom"
)

// TestCollector: a registry gathers the Set's families with client_golang's
// own encoder, names and help that its linter accepts, drops and refusals
// by peer with the "other" series past the limit.
func TestCollector(t *testing.T) {
	set := &metrics.Set{Limit: 1}
	for _, r := range []string{"127.0.0.2:1", "127.0.0.2:2", "127.0.0.3:1"} {
		set.Drop(drops.Drop{Remote: netip.MustParseAddrPort(r), Local: netip.MustParseAddrPort("127.0.0.1:179"), Reason: drops.MD5Mismatch, Time: time.Now()})
	}
	set.Refused(tcpmd5.Refusal{Remote: netip.MustParseAddrPort("127.0.0.9:5000"), Local: netip.MustParseAddrPort("127.0.0.1:179"), Reason: tcpmd5.RefusedNoKey})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(tcpmd5prom.New(set)))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
	err = testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP tcpmd5_dropped_segments_total `+metrics.Families[0].Help+`
# TYPE tcpmd5_dropped_segments_total counter
tcpmd5_dropped_segments_total{local="127.0.0.1:179",reason="md5-mismatch",remote="127.0.0.2"} 2
tcpmd5_dropped_segments_total{local="other",reason="other",remote="other"} 1
# HELP tcpmd5_refused_connections_total `+metrics.Families[3].Help+`
# TYPE tcpmd5_refused_connections_total counter
tcpmd5_refused_connections_total{local="127.0.0.1:179",reason="no-key",remote="127.0.0.9"} 1
# HELP tcpmd5_drop_events_watched `+metrics.Families[2].Help+`
# TYPE tcpmd5_drop_events_watched gauge
tcpmd5_drop_events_watched 0
`), "tcpmd5_dropped_segments_total", "tcpmd5_refused_connections_total", "tcpmd5_drop_events_watched")
	assert.NoError(t, err)

	// A second collector of the same families in one registry is refused,
	// as client_golang refuses any duplicate.
	assert.Error(t, reg.Register(tcpmd5prom.New(&metrics.Set{})))
}
