package tcpmd5

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// BenchmarkKeyChainRoll rolls up to 10,000 live MD5 sessions to a new secret:
// the chain (one setsockopt(2) TCP_MD5SIG per session, the secret
// replaced in place) against the same calls made by hand with x/sys over
// the same sockets, side by side in one run; the ratio is reported.
func BenchmarkKeyChainRoll(b *testing.B) {
	testenv.Require(b, testenv.MD5)
	testenv.Netns(b)
	// Each session takes two descriptors, both ends being here: as many
	// as 10,000 as RLIMIT_NOFILE's hard limit allows.
	var lim unix.Rlimit
	require.NoError(b, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	lim.Cur = lim.Max
	require.NoError(b, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim))
	sessions := min(10000, int(lim.Max-256)/2)
	b.Logf("%d sessions", sessions)
	peers := netip.MustParsePrefix("127.0.0.0/8")
	chain := NewKeyChain()
	require.NoError(b, chain.SetKey(Key{Peer: peers, Secret: fakeA}, time.Time{}))
	ln, err := (&ListenConfig{KeyChain: chain}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	accepted := make(chan *net.TCPConn, sessions)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var server []*net.TCPConn
	for i := range sessions {
		d := Dialer{Keys: []Key{{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: fakeA}}}
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 1, byte(i>>8), byte(i))}
		c, err := d.Dial("tcp4", ln.Addr().String())
		require.NoError(b, err)
		defer c.Close()
		server = append(server, <-accepted)
	}
	for _, c := range server {
		defer c.Close()
	}
	secrets := [][]byte{fakeB, fakeA}
	b.Run("chain", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			require.NoError(b, chain.SetKey(Key{Peer: peers, Secret: secrets[i%2]}, time.Time{}))
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sessions), "ns/session")
	})
	b.Run("x/sys", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			for _, c := range server {
				rc, err := c.SyscallConn()
				require.NoError(b, err)
				a := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().As4()
				sig := unix.TCPMD5Sig{Keylen: uint16(len(secrets[i%2]))}
				sig.Addr.Family = unix.AF_INET
				copy(sig.Addr.Data[2:6], a[:])
				copy(sig.Key[:], secrets[i%2])
				var serr error
				require.NoError(b, rc.Control(func(fd uintptr) { serr = unix.SetsockoptTCPMD5Sig(int(fd), unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig) }))
				require.NoError(b, serr)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sessions), "ns/session")
	})
}
