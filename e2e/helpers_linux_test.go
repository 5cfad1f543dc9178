package e2e_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// listenIn starts lc inside h and closes the listener when t ends.
func listenIn(t testing.TB, h *testnet.Host, lc *tcpmd5.ListenConfig, network, address string) *tcpmd5.Listener {
	t.Helper()
	var ln *tcpmd5.Listener
	require.NoError(t, h.Do(func() (err error) {
		ln, err = lc.Listen(context.Background(), network, address)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialIn dials address with d from inside h.
func dialIn(h *testnet.Host, d *tcpmd5.Dialer, network, address string) (c net.Conn, err error) {
	if derr := h.Do(func() error {
		c, err = d.Dial(network, address)
		return nil
	}); derr != nil {
		return nil, derr
	}
	return c, err
}

// netDialer returns a Dialer with keys, for dials that must succeed.
func netDialer(keys ...tcpmd5.Key) *tcpmd5.Dialer {
	d := &tcpmd5.Dialer{Keys: keys}
	d.Timeout = testkit.MustConnect
	return d
}

// refusing returns d with the timeout after which a test calls a dial
// refused.
func refusing(d *tcpmd5.Dialer) *tcpmd5.Dialer {
	d.Timeout = testkit.RefuseAfter
	return d
}

// countersIn reads h's TCP counters.
func countersIn(t testing.TB, h *testnet.Host) netstat.Counters {
	t.Helper()
	var c netstat.Counters
	require.NoError(t, h.Do(func() (err error) {
		c, err = netstat.Read()
		return err
	}))
	return c
}

// waitCounter waits until counter has grown inside h since before.
func waitCounter(t testing.TB, h *testnet.Host, before netstat.Counters, counter string, within time.Duration) {
	t.Helper()
	h.WaitFor(t, within, counter+" moving", func() bool {
		c, err := netstat.Read()
		return err == nil && c[counter] > before[counter]
	})
}

// waitListening waits until a socket listens on port inside h.
func waitListening(t testing.TB, h *testnet.Host, port int) {
	t.Helper()
	h.WaitFor(t, 10*time.Second, fmt.Sprintf("a listener on port %d", port), func() bool {
		socks, err := netstat.Sockets()
		return err == nil && netstat.Count(socks, port, netstat.StateListen) > 0
	})
}

// bgpOpen is what a test checks in a BGP OPEN message (RFC 4271 4.2).
type bgpOpen struct {
	AS       uint16
	RouterID netip.Addr
}

// readOpen reads one BGP message from c and requires it to be an OPEN.
func readOpen(t testing.TB, c net.Conn) bgpOpen {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	hdr := make([]byte, 19)
	_, err := io.ReadFull(c, hdr)
	require.NoError(t, err, "no BGP message arrived")
	for i := range 16 {
		require.Equal(t, byte(0xff), hdr[i], "the BGP marker is not all ones: % x", hdr)
	}
	n := int(binary.BigEndian.Uint16(hdr[16:]))
	require.Equal(t, byte(1), hdr[18], "the first BGP message is of type %d, not OPEN (1)", hdr[18])
	require.GreaterOrEqual(t, n, 29, "an OPEN of %d bytes is too short", n)
	body := make([]byte, n-19)
	_, err = io.ReadFull(c, body)
	require.NoError(t, err)
	require.Equal(t, byte(4), body[0], "BGP version")
	return bgpOpen{
		AS:       binary.BigEndian.Uint16(body[1:3]),
		RouterID: netip.AddrFrom4([4]byte(body[5:9])),
	}
}
