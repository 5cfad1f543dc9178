package main_test

import (
	"io"
	"net"
	"os"
	"regexp"
	"strings"
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

// TestListenReloadsChain: "listen -k" runs its key file as a chain. A
// session is open and flowing; the file gains a new secret for the peer
// from a moment on, and SIGHUP reloads it: listen says so and prints the
// session's key state. The peer (a Dialer whose chain switches at the same
// moment) keeps its session, every byte arriving; afterwards the old
// secret is dropped (TCPMD5Failure) and the new one connects. SIGUSR1
// prints the sessions again; a file that does not parse leaves the keys
// as they were, and says so.
func TestListenReloadsChain(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	file := keyFile(t, 0o600, ourAddr+" "+secretA+"\n")
	ln := start(t, binary, "listen", "-k", "-key-file", file, peerAddr+":0")
	addr := addrIn(t, ln, "tcpmd5 listen: listening on ")

	chain := tcpmd5.NewKeyChain()
	require.NoError(t, chain.SetKey(key(t, peerAddr, secretA), time.Time{}))
	d := &tcpmd5.Dialer{KeyChain: chain}
	d.Timeout = testkit.MustConnect
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
	c, err := d.Dial("tcp4", addr)
	require.NoError(t, err)
	ln.waitFor(t, "the connection", func(_, stderr []string) bool { return contains(stderr, "connection from "+ourAddr) })
	_, err = io.WriteString(c, "before\n")
	require.NoError(t, err)

	at := time.Now().Add(2 * time.Second).Truncate(time.Second)
	require.NoError(t, os.WriteFile(file, []byte(ourAddr+" "+secretA+"\n"+ourAddr+" from="+at.UTC().Format(time.RFC3339)+" "+secretB+"\n"), 0o600))
	require.NoError(t, ln.cmd.Process.Signal(syscall.SIGHUP))
	ln.waitFor(t, "the reload", func(_, stderr []string) bool { return contains(stderr, "tcpmd5 listen: reloaded 2 keys") })
	ln.waitFor(t, "the session's key state", func(_, stderr []string) bool {
		return contains(stderr, "tcpmd5 listen: session "+ourAddr+":") && contains(stderr, "keys [md5 "+ourAddr+"/32]")
	})
	require.NoError(t, chain.SetKey(key(t, peerAddr, secretB), at))
	time.Sleep(time.Until(at) + time.Second)
	_, err = io.WriteString(c, "after\n")
	require.NoError(t, err)
	ln.waitFor(t, "both lines of the session", func(stdout, _ []string) bool { return contains(stdout, "after") })
	c.Close()

	testkit.DropDial(t, testkit.Dialer(ourAddr, key(t, peerAddr, secretA)), "tcp4", addr, netstat.MD5Failure)
	nc, err := testkit.Dialer(ourAddr, key(t, peerAddr, secretB)).Dial("tcp4", addr)
	require.NoError(t, err, "the new secret does not connect")
	_, err = io.WriteString(nc, "new secret\n")
	require.NoError(t, err)
	nc.Close()
	ln.waitFor(t, "the new secret's line", func(stdout, _ []string) bool { return contains(stdout, "new secret") })

	require.NoError(t, os.WriteFile(file, []byte("not a key file\n"), 0o600))
	require.NoError(t, ln.cmd.Process.Signal(syscall.SIGHUP))
	ln.waitFor(t, "the failed reload", func(_, stderr []string) bool {
		return contains(stderr, "reload failed, the keys stay as they were")
	})
	require.NoError(t, ln.cmd.Process.Signal(syscall.SIGUSR1))
	ln.waitFor(t, "the sessions on SIGUSR1", func(_, stderr []string) bool {
		n := 0
		for _, l := range stderr {
			if regexp.MustCompile(`^tcpmd5 listen: \d+ sessions$`).MatchString(l) {
				n++
			}
		}
		return n >= 3
	})
	assert.Equal(t, 0, ln.exit(t))
	out := ln.output()
	assert.True(t, strings.Index(out, "before") < strings.Index(out, "after"), "the session's bytes came out of order")
	requireNoSecret(t, out)
}
