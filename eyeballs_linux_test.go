package tcpmd5_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/tcplowlevel/tcpmd5"
)

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
