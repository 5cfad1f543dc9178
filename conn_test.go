package tcpmd5_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
)

const leak = "fake-secret-xyzzy"

func TestParseKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		peer, secret string
		want         string // the key's peer prefix, or "" when ParseKey must fail
		ifindex      int
		err          string // part of the error
	}{
		{peer: "192.0.2.1", secret: leak, want: "192.0.2.1/32"},
		{peer: "2001:db8::1", secret: leak, want: "2001:db8::1/128"},
		{peer: "2001:db8::/64", secret: leak, want: "2001:db8::/64"},
		{peer: "192.0.2.0/24", secret: leak, want: "192.0.2.0/24"},
		{peer: "0.0.0.0/0", secret: leak, want: "0.0.0.0/0"},
		{peer: "::ffff:192.0.2.1", secret: leak, want: "192.0.2.1/32"},
		{peer: "::ffff:192.0.2.0/120", secret: leak, want: "192.0.2.0/24"},
		{peer: "192.0.2.1", secret: strings.Repeat("k", tcpmd5.MaxSecretLen), want: "192.0.2.1/32"},
		{peer: "192.0.2.1", secret: "k", want: "192.0.2.1/32"},

		{peer: "192.0.2.1/24", secret: leak, err: "host bits set; did you mean 192.0.2.0/24?"},
		{peer: "2001:db8::1/64", secret: leak, err: "did you mean 2001:db8::/64?"},
		{peer: "192.0.2.1", secret: "", err: "the secret is empty"},
		{peer: "192.0.2.1", secret: strings.Repeat("k", tcpmd5.MaxSecretLen+1), err: "81 bytes, longer than the kernel's limit of 80"},
		{peer: "router1", secret: leak, err: `the peer (7 bytes, not shown) is not an IP address or prefix`},
		{peer: "", secret: leak, err: "is not an IP address or prefix"},
		{peer: "192.0.2.1/33", secret: leak, err: "is not an IP address or prefix"},
		{peer: "192.0.2.256", secret: leak, err: "is not an IP address or prefix"},
		{peer: "fe80::1%no-such-interface0", secret: leak, err: `the zone names no interface on this host`},
		{peer: "fe80::1%0", secret: leak, err: "interface index 0 is not a valid interface"},
		{peer: "fe80::/64%1", secret: leak, err: "a zone goes with a single address, not a prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.peer+"/"+fmt.Sprint(len(tt.secret)), func(t *testing.T) {
			t.Parallel()
			k, err := tcpmd5.ParseKey(tt.peer, tt.secret)
			if tt.want == "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				assert.True(t, strings.HasPrefix(err.Error(), "tcpmd5: "), "%q", err)
				if tt.secret != "" {
					assert.NotContains(t, err.Error(), tt.secret)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, k.Peer.String())
			assert.Equal(t, tt.ifindex, k.Ifindex)
			assert.Equal(t, tt.secret, string(k.Secret))
		})
	}
}

func TestKeyNeverFormatsTheSecret(t *testing.T) {
	t.Parallel()
	k := tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.0/24"), Secret: []byte(leak), Ifindex: 3}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
		for _, v := range []any{k, &k, []tcpmd5.Key{k}, map[string]tcpmd5.Key{"k": k}, struct{ K tcpmd5.Key }{k}} {
			out := fmt.Sprintf(verb, v)
			assert.NotContains(t, out, leak, "%s of %T", verb, v)
			assert.NotContains(t, out, fmt.Sprintf("%x", leak), "%s of %T", verb, v)
			assert.NotContains(t, strings.ToLower(out), strings.ToLower(fmt.Sprintf("%X", leak)), "%s of %T", verb, v)
		}
	}
	assert.Equal(t, "192.0.2.0/24%3 secret:<redacted>", k.String())
	assert.Equal(t, `tcpmd5.Key{Peer:netip.MustParsePrefix("192.0.2.0/24"), Secret:<redacted>, Ifindex:3}`, fmt.Sprintf("%#v", k))
	assert.Equal(t, "192.0.2.1 secret:<redacted>", fmt.Sprint(tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(leak)}))
	// A Key without a peer says so, in words and in Go syntax that compiles.
	assert.Equal(t, "<no peer> secret:<redacted>", tcpmd5.Key{Secret: []byte(leak)}.String())
	assert.Equal(t, "tcpmd5.Key{Peer:netip.Prefix{}, Secret:<redacted>, Ifindex:0}", fmt.Sprintf("%#v", tcpmd5.Key{}))
}

func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{"192.0.2.1", "2001:db8::/64", "fe80::1%1", "::ffff:192.0.2.0/120", "0.0.0.0/0", "192.0.2.1/24", "x", "1.2.3.4%", "::/0%1"} {
		f.Add(seed, "fake-secret")
	}
	f.Fuzz(func(t *testing.T, peer, secret string) {
		// The same key with another secret of the same length: whatever
		// ParseKey says or prints must not change with the secret's bytes.
		other := []byte(secret)
		for i := range other {
			other[i] ^= 0x5a
		}
		k, err := tcpmd5.ParseKey(peer, secret)
		k2, err2 := tcpmd5.ParseKey(peer, string(other))
		if err != nil {
			require.Error(t, err2)
			require.Equal(t, err.Error(), err2.Error(), "an error depends on the secret's bytes")
			return
		}
		require.NoError(t, err2)
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			require.Equal(t, fmt.Sprintf(verb, k), fmt.Sprintf(verb, k2), "%s depends on the secret's bytes", verb)
		}
		// Round trip: the key's own description parses to the same key.
		text := k.Peer.String()
		if k.Ifindex != 0 {
			text = fmt.Sprintf("%s%%%d", k.Peer.Addr(), k.Ifindex)
		}
		again, err := tcpmd5.ParseKey(text, secret)
		require.NoError(t, err, "%q from %q", text, peer)
		require.Equal(t, k.Peer, again.Peer)
		require.Equal(t, k.Ifindex, again.Ifindex)
		require.Equal(t, k.Secret, again.Secret)
		require.True(t, k.Peer.Addr().Is4() || !k.Peer.Addr().Is4In6() || k.Peer.Bits() < 96, "v4-mapped peers are stored as IPv4: %v", k.Peer)
	})
}
