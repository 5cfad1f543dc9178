package tcpmd5

import (
	"cmp"
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/rawao"
	"github.com/tcplowlevel/tcpmd5/internal/strace"
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
	sessions := benchSessions(b, 10000)
	peers := netip.MustParsePrefix("127.0.0.0/8")
	chain := NewKeyChain()
	require.NoError(b, chain.SetKey(Key{Peer: peers, Secret: fakeA}, time.Time{}))
	server := chainSessions(b, chain, sessions, Dialer{Keys: []Key{{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: fakeA}}})
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

// benchSessions raises RLIMIT_NOFILE as far as it goes and returns how many
// sessions, up to want, fit with both ends in this process.
func benchSessions(b *testing.B, want int) int {
	var lim unix.Rlimit
	require.NoError(b, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	old := lim
	lim.Max = max(lim.Max, uint64(2*want+256)) // root may raise it (inside a UML kernel, say)
	lim.Cur = lim.Max
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		lim.Max, lim.Cur = old.Max, old.Max
		require.NoError(b, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim))
	}
	sessions := min(want, int(lim.Max-256)/2)
	b.Logf("%d sessions", sessions)
	return sessions
}

// chainSessions makes a listener with chain and dials it sessions times
// with d, each from an address of its own, and returns the accepted ends;
// both ends close when b ends. The sessions stay idle, without keepalives:
// a TCP-AO peer's probe would ask for its key again and undo a switch.
func chainSessions(b *testing.B, chain *KeyChain, sessions int, d Dialer) []*net.TCPConn {
	refused := make(chan Refusal, 1)
	lc := ListenConfig{KeyChain: chain, OnRefuse: func(r Refusal) {
		select {
		case refused <- r:
		default:
		}
	}}
	lc.KeepAlive, d.KeepAlive = -1, -1
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(b, err)
	b.Cleanup(func() { ln.Close() })
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
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 1, byte(i>>8), byte(i))}
		c, err := d.Dial("tcp4", ln.Addr().String())
		require.NoError(b, err)
		b.Cleanup(func() { c.Close() })
		select {
		case sc := <-accepted:
			b.Cleanup(func() { sc.Close() })
			server = append(server, sc)
		case r := <-refused:
			b.Fatalf("session %d: the listener refused %v: %s", i, r.Remote, r.Reason)
		case <-time.After(30 * time.Second):
			b.Fatalf("session %d: dialled, but the listener handed over no connection in 30 s", i)
		}
	}
	return server
}

// BenchmarkKeyChainAORoll rolls up to 10,000 live TCP-AO sessions from one
// key to another and back, the chain against the same kernel calls made by
// hand through the raw UAPI, side by side in one run, in two ways: a new key
// preferred as it arrives (the chain's add makes it current and asks for it
// in one TCP_AO_ADD_KEY; then the old key's plain TCP_AO_DEL_KEY: two calls
// a session), and a key whose send lifetime begins after it is added (add;
// TCP_AO_INFO, read and written, since its write rewrites flags the chain
// does not own; delete: four, as by hand when the flags are kept, where
// the bare kernel needs three). It reports wall time and the setsockopt(2)
// and getsockopt(2) calls a session, as strace counts them over one more
// roll.
func BenchmarkKeyChainAORoll(b *testing.B) {
	testenv.Require(b, testenv.AO)
	testenv.Netns(b)
	sessions := benchSessions(b, 10000)
	peers := netip.MustParsePrefix("127.0.0.0/8")
	keys := [2]AOKey{
		{Peer: peers, SendID: 1, RecvID: 1, Algorithm: "hmac(sha1)", Secret: fakeA},
		{Peer: peers, SendID: 2, RecvID: 2, Algorithm: "hmac(sha1)", Secret: fakeB},
	}
	raw := func(k AOKey) rawao.Key {
		return rawao.Key{Peer: k.Peer, SendID: k.SendID, RecvID: k.RecvID, Algorithm: k.Algorithm, Secret: k.Secret}
	}
	chain := NewKeyChain()
	require.NoError(b, chain.SetAOKey(keys[0], Lifetime{}, Lifetime{}))
	var d Dialer
	for _, k := range keys {
		k.Peer = netip.MustParsePrefix("127.0.0.1/32")
		d.AOKeys = append(d.AOKeys, k)
	}
	var conns []syscall.RawConn
	for _, sc := range chainSessions(b, chain, sessions, d) {
		rc, err := sc.SyscallConn()
		require.NoError(b, err)
		conns = append(conns, rc)
	}
	// byHand runs op on every session's socket, as the hand-made rolls do.
	byHand := func(op func(fd int) error) {
		for _, rc := range conns {
			var err error
			require.NoError(b, rc.Control(func(fd uintptr) { err = op(int(fd)) }))
			require.NoError(b, err)
		}
	}
	held := 0 // the key the sessions hold
	rolls := map[string]func(){
		"chain/at-once": func() {
			next, prev := keys[1-held], keys[held]
			require.NoError(b, chain.SetAOKey(next, Lifetime{From: time.Now()}, Lifetime{}))
			require.NoError(b, chain.RemoveAOKey(prev))
			held = 1 - held
		},
		"chain/scheduled": func() {
			next, prev := keys[1-held], keys[held]
			require.NoError(b, chain.SetAOKey(next, Lifetime{From: time.Now().Add(time.Hour)}, Lifetime{}))
			require.NoError(b, chain.SetAOKey(next, Lifetime{From: time.Now()}, Lifetime{}))
			require.NoError(b, chain.RemoveAOKey(prev))
			held = 1 - held
		},
		"x/sys/at-once": func() {
			next, prev := raw(keys[1-held]), raw(keys[held])
			byHand(func(fd int) error {
				return cmp.Or(rawao.AddSigning(fd, unix.AF_INET, next), rawao.Del(fd, unix.AF_INET, prev))
			})
			held = 1 - held
		},
		"x/sys/scheduled-keeping-flags": func() {
			next, prev := raw(keys[1-held]), raw(keys[held])
			byHand(func(fd int) error {
				return cmp.Or(rawao.Add(fd, unix.AF_INET, next), rawao.SetSigningKeepingFlags(fd, next.SendID, next.RecvID), rawao.Del(fd, unix.AF_INET, prev))
			})
			held = 1 - held
		},
		"x/sys/scheduled": func() {
			next, prev := raw(keys[1-held]), raw(keys[held])
			byHand(func(fd int) error {
				return cmp.Or(rawao.Add(fd, unix.AF_INET, next), rawao.SetSigning(fd, next.SendID, next.RecvID), rawao.Del(fd, unix.AF_INET, prev))
			})
			held = 1 - held
		},
	}
	// The chain first: the hand-made rolls change the sessions behind its
	// back.
	for _, name := range []string{"chain/at-once", "chain/scheduled", "x/sys/at-once", "x/sys/scheduled-keeping-flags", "x/sys/scheduled"} {
		roll := rolls[name]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				roll()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sessions), "ns/session")
			n := strace.Count(b, roll, "setsockopt", "getsockopt")
			b.ReportMetric(float64(n["setsockopt"]+n["getsockopt"])/float64(sessions), "syscalls/session")
		})
	}
}
