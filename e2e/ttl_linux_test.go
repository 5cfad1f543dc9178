package e2e_test

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// TestTTLSecurityHops puts a router between a and b: r is one hop from b,
// a two. A listener on b that allows 1 hop takes r and refuses a; one that
// allows 2 takes both. IPv4 and IPv6.
func TestTTLSecurityHops(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	_, a, b, r := testnet.Routed(t)
	for _, v6 := range []bool{false, true} {
		server := b.Addr4
		if v6 {
			server = b.Addr6
		}
		for _, hops := range []int{1, 2} {
			if v6 && !server.IsValid() {
				t.Run("IPv6", func(t *testing.T) { testkit.RequireIPv6(t) }) // says why the IPv6 half does not run
				break
			}
			var ln *tcpmd5.Listener
			require.NoError(t, b.Host.Do(func() error {
				var err error
				ln, err = (&tcpmd5.ListenConfig{TTLSecurity: hops, AllowUnsigned: true}).Listen(t.Context(), "tcp", ":0")
				return err
			}))
			testkit.ServeEcho(t, ln)
			target := net.JoinHostPort(server.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			for _, from := range []struct {
				name    string
				host    *testnet.Host
				refused bool
			}{{"router, 1 hop", r, false}, {"host behind the router, 2 hops", a.Host, hops < 2}} {
				t.Run(net.JoinHostPort(server.String(), "")+" "+strconv.Itoa(hops)+" hops, from "+from.name, func(t *testing.T) {
					before := countersIn(t, b.Host)
					var c net.Conn
					err := from.host.Do(func() error {
						d := &tcpmd5.Dialer{TTLSecurity: hops}
						d.Timeout = testkit.MustConnect
						if from.refused {
							d.Timeout = testkit.RefuseAfter
						}
						var err error
						c, err = d.Dial("tcp", target)
						return err
					})
					moved := before.Delta(countersIn(t, b.Host), netstat.MinTTLDrop)[netstat.MinTTLDrop]
					if from.refused {
						testkit.RequireRefused(t, c, err)
						assert.Positive(t, moved)
						return
					}
					require.NoError(t, err)
					defer c.Close()
					testkit.Ping(t, c)
				})
			}
			ln.Close()
		}
	}
}
