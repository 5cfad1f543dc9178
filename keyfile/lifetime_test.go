package keyfile_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

// TestParseLifetimes: an MD5 key's start, an AO key's lifetimes both ways
// (from= and until= for both, the send- and accept- words for one), a
// peer with several MD5 keys of different starts; Write gives them back;
// a listener's Apply refuses a file with lifetimes.
func TestParseLifetimes(t *testing.T) {
	t1 := time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)
	t2 := t1.Add(5 * time.Minute)
	input := `192.0.2.1 fake-secret-old
192.0.2.1 from=2026-12-01T03:00:00+01:00 fake-secret-new # the start, in another zone
192.0.2.2 ao send=1 recv=1 alg=hmac(sha1) until=2026-12-01T02:05:00Z fake-secret-ao-old
192.0.2.2 ao send=2 recv=2 alg=hmac(sha1) send-from=2026-12-01T02:00:00Z accept-until=2026-12-01T02:05:00Z "from=quoted"
`
	f, err := keyfile.Parse(strings.NewReader(input), "chain.keys")
	require.NoError(t, err)
	require.Len(t, f.Keys, 2)
	require.Len(t, f.AOKeys, 2)
	assert.True(t, f.Start(0).IsZero())
	assert.Equal(t, t1, f.Start(1))
	assert.Equal(t, "fake-secret-new", string(f.Keys[1].Secret))
	assert.Equal(t, keyfile.Lifetimes{Send: tcpmd5.Lifetime{Until: t2}, Accept: tcpmd5.Lifetime{Until: t2}}, f.Lifetime(0))
	assert.Equal(t, keyfile.Lifetimes{Send: tcpmd5.Lifetime{From: t1}, Accept: tcpmd5.Lifetime{Until: t2}}, f.Lifetime(1))
	assert.Equal(t, "from=quoted", string(f.AOKeys[1].Secret), "a quoted secret that looks like a lifetime stays a secret")
	assert.True(t, f.Timed())

	var b strings.Builder
	require.NoError(t, keyfile.Write(&b, f))
	again, err := keyfile.Parse(strings.NewReader(b.String()), "written")
	require.NoError(t, err)
	assert.Equal(t, f, again, "what Write writes, Parse reads back:\n%s", b.String())

	only := f.Lookup(tcpmd5.Key{}.Peer.Addr())
	assert.Zero(t, only.Len())
	two := f.Lookup(f.AOKeys[0].Peer.Addr())
	assert.Equal(t, f.Lifetimes, two.Lifetimes, "Lookup keeps the lifetimes")

	err = f.Apply(nil)
	assert.ErrorContains(t, err, "only a KeyChain follows")
	plain, err := keyfile.Parse(strings.NewReader("192.0.2.1 fake-secret-x\n"), "plain")
	require.NoError(t, err)
	assert.False(t, plain.Timed())
}

// TestParseLifetimeErrors: what the lifetime words refuse, each naming the
// line and none quoting the secret.
func TestParseLifetimeErrors(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"192.0.2.1 until=2026-12-01T02:00:00Z fake-secret-x", "an MD5 key has a start only"},
		{"192.0.2.1 from=yesterday fake-secret-x", "from= takes an RFC 3339 time"},
		{"192.0.2.1 from=0000-01-01T00:00:00+00:10 fake-secret-x", "from= takes a time whose year in UTC is 0000 to 9999"},
		{"192.0.2.2 ao send=1 recv=1 alg=hmac(sha1) until=9999-12-31T23:59:00-01:00 fake-secret-x", "until= takes a time whose year in UTC is 0000 to 9999"},
		{"192.0.2.1 from=2026-12-01T02:00:00Z", "no secret after the lifetimes"},
		{"192.0.2.2 ao send=1 recv=1 alg=hmac(sha1) send-until=soon fake-secret-x", "send-until= takes an RFC 3339 time"},
		{"192.0.2.1 from=2026-12-01T02:00:00Z fake-secret-x\n192.0.2.1 from=2026-12-01T02:00:00Z fake-secret-y", "already has a key from 2026-12-01T02:00:00Z on line 1"},
	} {
		_, err := keyfile.Parse(strings.NewReader(tc.line+"\n"), "chain.keys")
		require.Error(t, err, tc.line)
		assert.Contains(t, err.Error(), tc.want)
		assert.Contains(t, err.Error(), "chain.keys:")
		assert.NotContains(t, err.Error(), "fake-secret")
	}
}
