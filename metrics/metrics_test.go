package metrics_test

import (
	"io"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/metrics"
)

func drop(remote, local string, r drops.Reason) drops.Drop {
	return drops.Drop{Remote: netip.MustParseAddrPort(remote), Local: netip.MustParseAddrPort(local), Reason: r, Flags: "S", Time: time.Now()}
}

func refusal(remote, local string, r tcpmd5.RefusalReason) tcpmd5.Refusal {
	return tcpmd5.Refusal{Remote: netip.MustParseAddrPort(remote), Local: netip.MustParseAddrPort(local), Reason: r}
}

// scrape returns what s serves at /metrics, and requires the content type
// of the text format.
func scrape(t *testing.T, s *metrics.Set) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	assert.Equal(t, "text/plain; version=0.0.4; charset=utf-8", rec.Header().Get("Content-Type"))
	b, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	return string(b)
}

// TestSeries: drops and refusals count by peer address (a peer's source
// ports and its v4-mapped form are one series), local address and reason;
// past Limit peers, further ones count in the "other" series; every family
// has its HELP and TYPE lines, including those with no sample.
func TestSeries(t *testing.T) {
	s := &metrics.Set{Limit: 2}
	s.Drop(drop("127.0.0.2:40000", "127.0.0.1:179", drops.MD5Mismatch))
	s.Drop(drop("[::ffff:127.0.0.2]:40001", "127.0.0.1:179", drops.MD5Mismatch))
	s.Drop(drop("127.0.0.3:40000", "127.0.0.1:179", drops.MD5Missing))
	s.Drop(drop("127.0.0.4:40000", "127.0.0.1:179", drops.MD5Missing)) // past the limit
	s.Drop(drop("127.0.0.5:40000", "127.0.0.1:179", drops.AOMismatch)) // past the limit
	s.Refused(refusal("[::ffff:127.0.0.9]:5000", "[::ffff:127.0.0.1]:179", tcpmd5.RefusedNoKey))
	s.Refused(refusal("127.0.0.9:5001", "127.0.0.1:179", tcpmd5.RefusedNoKey))
	s.Refused(refusal("[::1]:5000", "[::1]:179", tcpmd5.RefusedKeyAdded))
	s.Refused(refusal("[::2]:5000", "[::1]:179", tcpmd5.RefusedKeyAdded)) // past the limit

	text := scrape(t, s)
	for _, want := range []string{
		`tcpmd5_dropped_segments_total{remote="127.0.0.2",local="127.0.0.1:179",reason="md5-mismatch"} 2`,
		`tcpmd5_dropped_segments_total{remote="127.0.0.3",local="127.0.0.1:179",reason="md5-missing"} 1`,
		`tcpmd5_dropped_segments_total{remote="other",local="other",reason="other"} 2`,
		`tcpmd5_refused_connections_total{remote="127.0.0.9",local="127.0.0.1:179",reason="no-key"} 2`,
		`tcpmd5_refused_connections_total{remote="::1",local="[::1]:179",reason="key-added"} 1`,
		`tcpmd5_refused_connections_total{remote="other",local="other",reason="other"} 1`,
		"tcpmd5_drop_events_lost_total 0",
		"tcpmd5_drop_events_watched 0",
	} {
		assert.Contains(t, text, want+"\n")
	}
	assert.NotContains(t, text, "127.0.0.4")
	assert.NotContains(t, text, "::ffff:")
	for _, f := range metrics.Families {
		assert.Contains(t, text, "# HELP "+f.Name+" ")
		assert.Contains(t, text, "# TYPE "+f.Name+" "+f.Type+"\n")
	}
	// Every line is a comment or a sample: NAME{LABELS} VALUE.
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if strings.HasPrefix(line, "# ") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '}'); i > 0 {
			name, value, ok = line[:i+1], strings.TrimPrefix(line[i+1:], " "), line[i+1] == ' '
		}
		assert.True(t, ok, "not a sample line: %q", line)
		assert.Regexp(t, `^tcpmd5_[a-z_]+(\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\})?$`, name)
		assert.Regexp(t, `^[0-9]+(\.[0-9]+)?(e\+[0-9]+)?$`, value)
	}
}

// TestZeroSet: a zero Set serves every family; the kernel's counters are
// those /proc/net/netstat has here, and the drop families have no series
// of peers.
func TestZeroSet(t *testing.T) {
	var s metrics.Set
	text := scrape(t, &s)
	assert.NotContains(t, text, "tcpmd5_dropped_segments_total{")
	assert.NotContains(t, text, "tcpmd5_refused_connections_total{")
	c, err := netstat.Read()
	if err != nil {
		assert.NotContains(t, text, "tcpmd5_netstat_total{", "no counters here (%v), yet a series", err)
		return
	}
	for _, name := range netstat.MD5Counters {
		if _, ok := c[name]; ok {
			assert.Contains(t, text, `tcpmd5_netstat_total{counter="`+name+`"} `)
		}
	}
	_, ao := c[netstat.AOBad]
	assert.Equal(t, ao, strings.Contains(text, `counter="TCPAOBad"`), "a series for TCPAOBad exactly where the kernel has it")
}

// TestGatherOrder: Gather returns one slice per family in the order of
// Families, each sorted by its labels, so that two scrapes of the same
// counts are the same text.
func TestGatherOrder(t *testing.T) {
	var s metrics.Set
	for _, r := range []string{"127.0.0.7:1", "127.0.0.5:1", "127.0.0.6:1"} {
		s.Refused(refusal(r, "127.0.0.1:179", tcpmd5.RefusedNoKey))
	}
	g := s.Gather()
	require.Len(t, g, len(metrics.Families))
	var remotes []string
	for _, sm := range g[3] {
		remotes = append(remotes, sm.Labels[0])
	}
	assert.Equal(t, []string{"127.0.0.5", "127.0.0.6", "127.0.0.7"}, remotes)
	assert.Equal(t, metrics.Families[3].Name, "tcpmd5_refused_connections_total")
}
