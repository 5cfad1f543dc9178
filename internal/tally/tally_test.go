package tally_test

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
)

// TestDropTally: drops count by peer address, local address and reason,
// whatever the peer's source port; the most recent line comes first; past
// Limit lines, drops count in Others; Total counts them all.
func TestDropTally(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	local := netip.MustParseAddrPort("127.0.0.1:179")
	drop := func(remote string, reason drops.Reason, sec int) drops.Drop {
		return drops.Drop{Remote: netip.MustParseAddrPort(remote), Local: local, Reason: reason, Flags: "S", Time: t0.Add(time.Duration(sec) * time.Second)}
	}
	seen := tally.Tally{Limit: 2}
	seen.Add(drop("127.0.0.2:40000", drops.MD5Mismatch, 0))
	seen.Add(drop("127.0.0.2:40001", drops.MD5Mismatch, 1)) // a retry from a new port: the same line
	seen.Add(drop("127.0.0.3:40000", drops.MD5Missing, 2))
	seen.Add(drop("127.0.0.4:40000", drops.MD5Missing, 3)) // past the limit
	seen.Add(drop("127.0.0.2:40002", drops.MD5Unexpected, 4))

	peers := seen.Peers()
	require.Len(t, peers, 2)
	assert.Equal(t, uint64(2), seen.Others)
	assert.Equal(t, uint64(5), seen.Total())
	assert.Equal(t, "127.0.0.3:40000", peers[0].Remote.String(), "the most recent first")
	assert.Equal(t, tally.Peer{
		Remote: netip.MustParseAddrPort("127.0.0.2:40001"), Local: local, Reason: drops.MD5Mismatch,
		Flags: "S", Count: 2, First: t0, Last: t0.Add(time.Second),
	}, peers[1])

	var zero tally.Tally
	assert.Empty(t, zero.Peers())
	assert.Zero(t, zero.Total())
}

// TestPeerDropsJSON: the fields tcpmd5 watch -json prints, and null where
// no peer is known.
func TestPeerDropsJSON(t *testing.T) {
	p := tally.Peer{
		Remote: netip.MustParseAddrPort("[::1]:40000"), Local: netip.MustParseAddrPort("[::1]:179"),
		Reason: drops.MD5Mismatch, Flags: "S", Count: 3,
		Last: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
	}
	b, err := json.Marshal(p)
	require.NoError(t, err)
	assert.JSONEq(t, `{"time":"2026-11-24T10:00:00Z","remote":"[::1]:40000","local":"[::1]:179","reason":"md5-mismatch","flags":"S","count":3}`, string(b))
	b, err = json.Marshal(tally.Peer{Reason: drops.MD5Missing, Count: 1})
	require.NoError(t, err)
	assert.Contains(t, string(b), `"remote":null,"local":null,"reason":"md5-missing","flags":null`)
}

// TestDropReasons: every reason has its own meaning.
func TestDropReasons(t *testing.T) {
	seen := make(map[string]bool)
	for _, r := range drops.Reasons {
		m := tally.Meaning(r)
		assert.NotEqual(t, "unknown reason", m, r)
		assert.False(t, seen[m], "%s shares its meaning", r)
		seen[m] = true
	}
	assert.Equal(t, "unknown reason", tally.Meaning("no-such"))
}

// TestRefusalMeanings: every refusal reason has its own meaning.
func TestRefusalMeanings(t *testing.T) {
	seen := make(map[string]bool)
	for _, r := range []tcpmd5.RefusalReason{tcpmd5.RefusedNoKey, tcpmd5.RefusedKeyAdded, tcpmd5.RefusedUnreadable} {
		m := tally.RefusalMeaning(r)
		assert.False(t, seen[m], "%s shares its meaning", r)
		seen[m] = true
	}
}
