package main_test

import (
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

// TestSystemdSocketActivation runs "tcpmd5 listen -k ... systemd" under
// systemd-socket-activate (Debian's systemd), which holds the socket and
// starts the command on its first connection. A signed SYN does not start
// it: the socket has no key yet, so the kernel drops the SYN
// (TCPMD5Unexpected) and no connection completes. An unsigned peer no key
// covers starts it, and is refused (no-key); from then on the key is on
// the socket: the signed peer's data comes through, and its unsigned SYN
// is dropped (TCPMD5NotFound).
func TestSystemdSocketActivation(t *testing.T) {
	requireMD5(t)
	activate := testenv.RequireTool(t, "systemd-socket-activate", "systemd")
	t.Parallel()
	testenv.Netns(t)
	addr := net.JoinHostPort(peerAddr, strconv.Itoa(freePort(t)))
	file := keyFile(t, 0o600, ourAddr+" "+secretA+"\n")
	sa := start(t, activate, "-l", addr, binary, "listen", "-k", "-key-file", file, "systemd")
	sa.waitFor(t, "the socket", func(_, stderr []string) bool { return contains(stderr, "Listening on "+addr) })

	signed := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(t, peerAddr, secretA)}}
	signed.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
	before := testkit.Counters(t)
	short := *signed
	short.Timeout = testkit.RefuseAfter
	c, err := short.Dial("tcp4", addr)
	testkit.RequireRefused(t, c, err)
	assert.Positive(t, before.Delta(testkit.Counters(t), netstat.MD5Unexpected)[netstat.MD5Unexpected], "the signed SYN was not dropped as unexpected")
	assert.NotContains(t, sa.output(), "Communication attempt", "a signed SYN started the service")

	wake := &net.Dialer{Timeout: testkit.MustConnect, LocalAddr: &net.TCPAddr{IP: net.ParseIP(otherAddr)}}
	wc, err := wake.Dial("tcp4", addr)
	require.NoError(t, err, "the unsigned SYN reaches a socket with no key")
	sa.waitFor(t, "the wake-up connection refused", func(_, stderr []string) bool {
		return contains(stderr, "refused [no-key] from "+otherAddr)
	})
	require.NoError(t, wc.SetReadDeadline(time.Now().Add(testkit.MustConnect)))
	_, err = wc.Read(make([]byte, 1))
	assert.ErrorIs(t, err, syscall.ECONNRESET)
	wc.Close()
	sa.waitFor(t, "listening", func(_, stderr []string) bool { return contains(stderr, "listening on "+addr+" with 1 keys") })

	signed.Timeout = testkit.MustConnect
	sc, err := signed.Dial("tcp4", addr)
	require.NoError(t, err)
	_, err = sc.Write([]byte("signed hello\n"))
	require.NoError(t, err)
	require.NoError(t, sc.(*net.TCPConn).CloseWrite())
	sa.waitFor(t, "the signed peer's data", func(stdout, _ []string) bool { return contains(stdout, "signed hello") })
	sc.Close()

	unsigned := &tcpmd5.Dialer{}
	unsigned.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
	testkit.DropDial(t, unsigned, "tcp4", addr, netstat.MD5NotFound)
	assert.Equal(t, 0, sa.exit(t))
	requireNoSecret(t, sa.output())
}
