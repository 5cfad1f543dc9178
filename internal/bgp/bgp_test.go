package bgp_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/bgp"
)

func TestOpenRoundTrip(t *testing.T) {
	t.Parallel()
	for _, o := range []bgp.Open{
		{Version: 4, AS: 64512, HoldTime: 90, Identifier: netip.MustParseAddr("192.0.2.1")},
		{Version: 4, AS: 4200000001, HoldTime: 3, Identifier: netip.MustParseAddr("198.51.100.7")},
	} {
		b := bgp.AppendOpen(nil, o)
		m, err := bgp.Parse(append(b, "trailing bytes of the next message"...))
		require.NoError(t, err)
		require.NotNil(t, m.Open)
		assert.Equal(t, bgp.TypeOpen, m.Type)
		assert.Equal(t, o.Version, m.Open.Version)
		assert.Equal(t, o.AS, m.Open.AS)
		assert.Equal(t, o.HoldTime, m.Open.HoldTime)
		assert.Equal(t, o.Identifier, m.Open.Identifier)
		if o.AS > 0xffff {
			assert.Equal(t, []int{65}, m.Open.Capabilities)
		}
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	m, err := bgp.Parse(bgp.AppendOpen(nil, bgp.Open{Version: 4, AS: 4200000001, HoldTime: 90, Identifier: netip.MustParseAddr("192.0.2.7")}))
	require.NoError(t, err)
	assert.Equal(t, "BGP OPEN: version 4, AS 4200000001, hold time 90s, BGP identifier 192.0.2.7", m.String())

	notif := append(bytes.Repeat([]byte{0xff}, 16), 0, 21, bgp.TypeNotification, 6, 5)
	m, err = bgp.Parse(notif)
	require.NoError(t, err)
	assert.Equal(t, "BGP NOTIFICATION: error code 6 subcode 5 (Cease)", m.String())

	keepalive := append(bytes.Repeat([]byte{0xff}, 16), 0, 19, bgp.TypeKeepalive)
	m, err = bgp.Parse(keepalive)
	require.NoError(t, err)
	assert.Equal(t, "BGP KEEPALIVE message", m.String())
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	open := bgp.AppendOpen(nil, bgp.Open{Version: 4, AS: 4200000001, HoldTime: 90, Identifier: netip.MustParseAddr("192.0.2.1")})
	badParams := bytes.Clone(open)
	badParams[28]++ // says one more byte of parameters than it carries
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"text", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "not a BGP message"},
		{"short", open[:10], "not a BGP message"},
		{"truncated", open[:len(open)-1], "truncated"},
		{"length too small", append(bytes.Repeat([]byte{0xff}, 16), 0, 5, 1), "outside 19..4096"},
		{"parameter length", badParams, "optional parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := bgp.Parse(tt.input)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	assert.True(t, bgp.IsBGP(open[:5]), "a partial marker is BGP so far")
	assert.False(t, bgp.IsBGP([]byte("SSH")))
	assert.False(t, bgp.IsBGP(nil))
}

// FuzzParse checks that Parse never panics and that every OPEN it accepts
// survives AppendOpen and Parse unchanged in what probe reports.
func FuzzParse(f *testing.F) {
	f.Add(bgp.AppendOpen(nil, bgp.Open{Version: 4, AS: 64512, HoldTime: 90, Identifier: netip.MustParseAddr("192.0.2.1")}))
	f.Add(bgp.AppendOpen(nil, bgp.Open{Version: 4, AS: 4200000001, HoldTime: 180, Identifier: netip.MustParseAddr("192.0.2.2")}))
	f.Add(append(bytes.Repeat([]byte{0xff}, 16), 0, 21, bgp.TypeNotification, 6, 2))
	f.Add([]byte("SSH-2.0-x\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := bgp.Parse(b)
		if err != nil || m.Open == nil {
			return
		}
		again, err := bgp.Parse(bgp.AppendOpen(nil, *m.Open))
		require.NoError(t, err)
		assert.Equal(t, m.Open.Version&0xff, again.Open.Version)
		assert.Equal(t, m.Open.AS, again.Open.AS)
		assert.Equal(t, m.Open.HoldTime, again.Open.HoldTime)
		assert.Equal(t, m.Open.Identifier, again.Open.Identifier)
	})
}
