package tcpmd5_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/nettest"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

func TestHTTPOverSignedTCP(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.30.1", secretA)}}, "tcp4", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		require.ErrorIs(t, <-done, http.ErrServerClosed)
	})

	get := func(d *tcpmd5.Dialer) (string, error) {
		client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		defer client.CloseIdleConnections()
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	body, err := get(dialer("127.0.30.1", key(t, "127.0.0.1", secretA)))
	require.NoError(t, err)
	assert.Regexp(t, `^hello 127\.0\.30\.1:\d+$`, body)

	wrong := dialer("127.0.30.1", key(t, "127.0.0.1", secretB))
	wrong.Timeout = refuseAfter
	_, err = get(wrong)
	require.Error(t, err, "a client with the wrong key must not get an answer")
	assert.Contains(t, err.Error(), "same key")
}

// TestNettestConn runs x/net's conformance suite for net.Conn over a signed
// connection pair.
func TestNettestConn(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ln, err := tcpmd5.Listen("tcp4", "127.0.0.1:0", key(t, "127.0.31.1", secretA))
		if err != nil {
			return nil, nil, nil, err
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		c1, err = dialer("127.0.31.1", key(t, "127.0.0.1", secretA)).Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		c2 = <-accepted
		if c2 == nil {
			c1.Close()
			return nil, nil, nil, fmt.Errorf("accept failed")
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// TestFailedDialsLeakNothing makes 1,000 dials that fail in each way a
// signed dial can fail and requires the process to hold no more file
// descriptors or goroutines afterwards.
func TestFailedDialsLeakNothing(t *testing.T) {
	requireMD5(t)
	// Not parallel: it counts the process's sockets and goroutines.
	requireNoLeaks(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.32.1", secretA)}}, "tcp4", "127.0.0.1:0")
	addr := ln.Addr().String()

	wrongKey := dialer("127.0.32.1", key(t, "127.0.0.1", secretB))
	wrongKey.Timeout = 20 * time.Millisecond
	noKey := dialer("127.0.32.2", key(t, "127.0.99.1", secretA))
	badKey := dialer("127.0.32.3", tcpmd5.Key{Peer: key(t, "127.0.0.1", secretA).Peer, Secret: make([]byte, tcpmd5.MaxSecretLen+1)})
	lo, err := net.InterfaceByName("lo")
	require.NoError(t, err)
	notVRF := dialer("127.0.32.4", tcpmd5.Key{Peer: key(t, "127.0.0.1", secretA).Peer, Secret: []byte(secretA), Ifindex: lo.Index})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dialers := []func() (net.Conn, error){
		func() (net.Conn, error) { return wrongKey.Dial("tcp", addr) },
		func() (net.Conn, error) { return noKey.Dial("tcp", addr) },
		func() (net.Conn, error) { return badKey.Dial("tcp", addr) },
		func() (net.Conn, error) { return notVRF.Dial("tcp", addr) },
		func() (net.Conn, error) { return wrongKey.DialContext(ctx, "tcp", addr) },
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range 1000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialers[i%len(dialers)]()
			if !assert.Error(t, err) {
				c.Close()
			}
		}()
	}
	wg.Wait()
}

// TestDialTCPSigns dials with the DialTCP method Go 1.26 added to
// net.Dialer: ours signs as DialContext does, so the right key connects and
// a wrong one is dropped (TCPMD5Failure), and a destination without a key is
// refused.
func TestDialTCPSigns(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.32.50", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	raddr := ln.Addr().(*net.TCPAddr).AddrPort()
	laddr := netip.MustParseAddrPort("127.0.32.50:0")
	ctx := context.Background()

	c, err := dialer("", key(t, "127.0.0.1", secretA)).DialTCP(ctx, "tcp4", laddr, raddr)
	require.NoError(t, err)
	ping(t, c)
	c.Close()

	before := counters(t)
	wrong := dialer("", key(t, "127.0.0.1", secretB))
	wrong.Timeout = refuseAfter
	c, err = wrong.DialTCP(ctx, "tcp4", laddr, raddr)
	if c != nil {
		c.Close()
	}
	requireRefused(t, nil, err)
	assert.Positive(t, before.Delta(counters(t), netstat.MD5Failure)[netstat.MD5Failure])

	_, err = dialer("", key(t, "127.0.99.1", secretA)).DialTCP(ctx, "tcp4", laddr, raddr)
	require.ErrorIs(t, err, tcpmd5.ErrNoKey)
}

// BenchmarkDialKeys measures a signed dial, connect to accept and close,
// from a Dialer that holds 1 key and from one that holds 10,000, the one
// for the listener among them: what the Dialer's choice of key costs.
func BenchmarkDialKeys(b *testing.B) {
	requireMD5(b)
	ln := listen(b, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(b, "127.6.200.1", secretA)}}, "tcp4", "127.0.0.1:0")
	acceptAndReset(b, ln)
	for _, n := range []int{1, 10000} {
		keys := []tcpmd5.Key{key(b, "127.0.0.1", secretA)}
		for i := 1; i < n; i++ {
			keys = append(keys, tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 128, byte(i >> 8), byte(i)}), 32), Secret: []byte(secretB)})
		}
		d := dialer("127.6.200.1", keys...)
		b.Run("keys="+itoa(n), func(b *testing.B) {
			for b.Loop() {
				c, err := d.Dial("tcp4", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				closeReset(c)
			}
		})
	}
}

// TestDialerKeysChange: the Dialer indexes its Keys on first use and
// indexes them again when Keys is another slice, new or appended to.
func TestDialerKeysChange(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.32.60", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	d := dialer("127.0.32.60", key(t, "127.0.99.1", secretA))
	_, err := d.Dial("tcp", ln.Addr().String())
	require.ErrorIs(t, err, tcpmd5.ErrNoKey)
	d.Keys = append(d.Keys, key(t, "127.0.0.1", secretA))
	requireEcho(t, d, ln.Addr().String())
	d.Keys = []tcpmd5.Key{key(t, "127.0.0.1", secretB)}
	dropDial(t, d, "tcp", ln.Addr().String(), "")
	d.Keys = []tcpmd5.Key{{Peer: key(t, "127.0.0.1", secretA).Peer}}
	_, err = d.Dial("tcp", ln.Addr().String())
	require.ErrorContains(t, err, "the secret is empty")
}

// TestHappyEyeballsKeysEachAttempt resolves one name to 127.0.0.1 and ::1
// and gives the Dialer a different key for each: only the attempt signed
// with its own address's key can connect, so the connection's family shows
// that every attempt got the key for the address it dialled.
func TestHappyEyeballsKeysEachAttempt(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{
		key(t, "127.0.0.1", secretA),
		key(t, "::1", secretA),
	}}, "tcp", "[::]:0")
	serveEcho(t, ln)
	resolver := fakeDNS(t, "peer.test.", "127.0.0.1", "::1")
	target := net.JoinHostPort("peer.test.", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))

	tests := []struct {
		name     string
		v4, v6   string // the Dialer's secrets for each address
		wantIPv4 bool
	}{
		{name: "IPv6 key wrong", v4: secretA, v6: secretB, wantIPv4: true},
		{name: "IPv4 key wrong", v4: secretB, v6: secretA, wantIPv4: false},
	}
	sawFallback := false
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(t, "127.0.0.1", tt.v4), key(t, "::1", tt.v6)}}
			d.Resolver = resolver
			d.FallbackDelay = 50 * time.Millisecond
			d.Timeout = 5 * time.Second
			var mu sync.Mutex
			var attempts []string
			d.Control = func(network, address string, _ syscall.RawConn) error {
				mu.Lock()
				defer mu.Unlock()
				attempts = append(attempts, network)
				return nil
			}
			c, err := d.Dial("tcp", target)
			require.NoError(t, err)
			defer c.Close()
			ping(t, c)
			ip := c.RemoteAddr().(*net.TCPAddr).IP
			assert.Equal(t, tt.wantIPv4, ip.To4() != nil, "connected to %v", ip)
			mu.Lock()
			defer mu.Unlock()
			want := map[bool]string{true: "tcp4", false: "tcp6"}[tt.wantIPv4]
			assert.Contains(t, attempts, want)
			sawFallback = sawFallback || len(attempts) == 2
		})
	}
	assert.True(t, sawFallback, "one of the cases must have raced both families")
}

// fakeDNS serves A and AAAA records for name on a loopback UDP port and
// returns a resolver that asks only it.
func fakeDNS(t *testing.T, name string, addrs ...string) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	qname := dnsmessage.MustNewName(name)
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var req dnsmessage.Message
			if req.Unpack(buf[:n]) != nil || len(req.Questions) != 1 {
				continue
			}
			q := req.Questions[0]
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: req.ID, Response: true, Authoritative: true},
				Questions: req.Questions,
			}
			for _, a := range addrs {
				ip := net.ParseIP(a)
				h := dnsmessage.ResourceHeader{Name: qname, Class: dnsmessage.ClassINET, TTL: 60}
				switch {
				case q.Name != qname:
				case q.Type == dnsmessage.TypeA && ip.To4() != nil:
					h.Type = dnsmessage.TypeA
					resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: [4]byte(ip.To4())}})
				case q.Type == dnsmessage.TypeAAAA && ip.To4() == nil:
					h.Type = dnsmessage.TypeAAAA
					resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: [16]byte(ip)}})
				}
			}
			out, err := resp.Pack()
			if err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	server := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp4", server)
	}}
}

// TestDialerInterfaceKeyOnUnboundSocket: a Dialer whose only key for the
// destination is confined to a VRF, dialling from a socket not bound to
// it, says so rather than that no key covers the destination.
func TestDialerInterfaceKeyOnUnboundSocket(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	for _, d := range []*tcpmd5.Dialer{
		{Keys: []tcpmd5.Key{{Peer: netip.MustParsePrefix("127.0.31.0/24"), Secret: []byte(secretA), Ifindex: 999}}},
		{AOKeys: []tcpmd5.AOKey{{Peer: netip.MustParsePrefix("127.0.31.0/24"), Algorithm: "hmac(sha1)", Secret: []byte(secretA), Ifindex: 999}}},
	} {
		_, err := d.Dial("tcp4", "127.0.31.7:9")
		require.ErrorIs(t, err, tcpmd5.ErrNoKey)
		assert.Contains(t, err.Error(), "key is for VRF 999; bind the dialer's socket to that VRF")
	}
}

// TestDialTimeoutSaysWhetherItSigned: a dial that times out says "no answer
// to a signed SYN" where its attempt signed, and nothing of keys where it
// did not, whether its keys are the Dialer's own or a KeyChain's. The
// signed SYN goes to a listener that holds no key, which drops it; the
// unsigned one (AllowUnsigned) to a listener that holds a key for the
// dialer, which drops it too.
func TestDialTimeoutSaysWhetherItSigned(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	key := tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.77.1/32"), Secret: []byte("fake-timeout-a")}
	chain := tcpmd5.NewKeyChain()
	require.NoError(t, chain.SetKey(key, time.Time{}))
	for name, d := range map[string]*tcpmd5.Dialer{
		"own keys": {Keys: []tcpmd5.Key{key}, AllowUnsigned: true},
		"KeyChain": {KeyChain: chain, AllowUnsigned: true},
	} {
		t.Run(name, func(t *testing.T) {
			testenv.Netns(t)
			keyless, err := net.Listen("tcp4", "127.0.77.1:0")
			require.NoError(t, err)
			t.Cleanup(func() { keyless.Close() })
			keyed, err := tcpmd5.Listen("tcp4", "127.0.77.2:0", tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.77.9/32"), Secret: []byte("fake-timeout-b")})
			require.NoError(t, err)
			t.Cleanup(func() { keyed.Close() })
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP("127.0.77.9")}
			d.Timeout = 500 * time.Millisecond // the dials must fail: no answer comes
			for _, tc := range []struct {
				addr   string
				signed bool
			}{{keyless.Addr().String(), true}, {keyed.Addr().String(), false}} {
				_, err := d.Dial("tcp4", tc.addr)
				var ne net.Error
				require.ErrorAs(t, err, &ne, tc.addr)
				require.True(t, ne.Timeout(), "%s: %v", tc.addr, err)
				if tc.signed {
					assert.ErrorContains(t, err, "no answer to a signed SYN", tc.addr)
				} else {
					assert.NotContains(t, err.Error(), "signed", tc.addr)
				}
			}
		})
	}
}

// TestDialerCopyDialsByItsOwnFields: a Dialer copied after it dialled
// dials by the copy's fields, not the original's: the copy that no longer
// allows unsigned dials refuses a destination no key covers, which the
// original dials unsigned.
func TestDialerCopyDialsByItsOwnFields(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	ln, err := net.Listen("tcp4", "127.0.78.2:0")
	require.NoError(t, err)
	acceptAndReset(t, ln)
	original := &tcpmd5.Dialer{Keys: []tcpmd5.Key{{Peer: netip.MustParsePrefix("127.0.78.1/32"), Secret: []byte("fake-copy")}}, AllowUnsigned: true}
	original.Timeout = 30 * time.Second
	c, err := original.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err, "no key covers it: the original dials unsigned")
	c.Close()

	strict := *original
	strict.AllowUnsigned = false
	_, err = strict.Dial("tcp4", ln.Addr().String())
	require.ErrorIs(t, err, tcpmd5.ErrNoKey, "the copy does not allow unsigned dials")
	c, err = original.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err, "the original still does")
	c.Close()
}
