package keyfile_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

// TestApply reloads a live listener from a key file: a changed secret, a
// new peer and a peer gone. Afterwards the listener holds the file's keys
// and no others, and the kernel agrees: the new secret connects and the
// old one is dropped (TCPMD5Failure moves), the new peer connects, the
// gone peer's unsigned dial is refused. A file the listener cannot take
// stops Apply before it removes anything.
func TestApply(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.Netns(t)
	key := func(peer, secret string) tcpmd5.Key { return testkit.Key(t, peer, secret) }
	ln := testkit.Listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{
		key("127.0.70.1", testkit.SecretA),
		key("127.0.70.2", testkit.SecretA),
	}}, "tcp4", "127.0.0.1:0")
	testkit.ServeEcho(t, ln)
	addr := ln.Addr().String()

	f := keyfile.File{Keys: []tcpmd5.Key{key("127.0.70.1", testkit.SecretB), key("127.0.70.3", testkit.SecretA)}}
	require.NoError(t, f.Apply(ln))
	assert.Equal(t, f.Keys, ln.Keys())

	testkit.RequireEcho(t, testkit.Dialer("127.0.70.1", key("127.0.0.1", testkit.SecretB)), addr)
	testkit.DropDial(t, testkit.Dialer("127.0.70.1", key("127.0.0.1", testkit.SecretA)), "tcp4", addr, netstat.MD5Failure)
	testkit.RequireEcho(t, testkit.Dialer("127.0.70.3", key("127.0.0.1", testkit.SecretA)), addr)
	unsigned := testkit.Dialer("127.0.70.2")
	unsigned.AllowUnsigned = true
	testkit.RequireResetByPolicy(t, ln, unsigned, addr)

	overlapping := keyfile.File{
		Keys:   []tcpmd5.Key{key("127.0.70.9", testkit.SecretA)},
		AOKeys: []tcpmd5.AOKey{{Peer: key("127.0.70.0/24", "x").Peer, SendID: 1, RecvID: 1, Algorithm: "hmac(sha1)", Secret: []byte(testkit.SecretA)}},
	}
	require.ErrorContains(t, overlapping.Apply(ln), "a peer is MD5 or AO, not both")
	assert.Len(t, ln.Keys(), 3, "the file's first key went in; nothing was removed")
}
