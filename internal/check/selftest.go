package check

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// The self-test's loopback addresses: a listener, a peer it holds a key
// for, and a peer it holds none for. Linux routes all of 127.0.0.0/8 to lo.
const (
	serverAddr   = "127.0.0.1"
	keyedPeer    = "127.0.0.2"
	unkeyedPeer  = "127.0.0.3"
	rightSecret  = "tcpmd5-check-right-secret"
	wrongSecret  = "tcpmd5-check-wrong-secret"
	selfTestPing = "tcpmd5 check"
)

// selfTest runs a keyed listener on loopback and dials it four ways.
func selfTest(ctx context.Context, refusal time.Duration) []Result {
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(keyedPeer, rightSecret)}}
	ln, err := lc.Listen(ctx, "tcp4", serverAddr+":0")
	if err != nil {
		return []Result{{Check: "self-test", Status: StatusFail, Value: "no listener", Detail: err.Error()}}
	}
	var wg sync.WaitGroup
	wg.Go(func() { echo(ln) })
	defer wg.Wait()
	defer ln.Close()
	addr := ln.Addr().String()

	results := make([]Result, 4)
	var dials sync.WaitGroup
	dials.Go(func() { results[0] = rightKey(ctx, addr) })
	dials.Go(func() {
		results[1] = refused(ctx, "self-test: wrong key", signedDialer(wrongSecret, refusal), addr, "the listener dropped our SYN signed with another secret")
	})
	dials.Go(func() {
		d := &net.Dialer{Timeout: refusal, LocalAddr: localAddr(keyedPeer)}
		results[2] = refused(ctx, "self-test: no key", d, addr, "the listener dropped our unsigned SYN from a peer it holds a key for")
	})
	dials.Go(func() { results[3] = unsignedPeer(ctx, ln, addr, refusal) })
	dials.Wait()
	return results
}

func key(peer, secret string) tcpmd5.Key {
	a := netip.MustParseAddr(peer)
	return tcpmd5.Key{Peer: netip.PrefixFrom(a, a.BitLen()), Secret: []byte(secret)}
}

func localAddr(ip string) *net.TCPAddr {
	return &net.TCPAddr{IP: net.ParseIP(ip)}
}

func signedDialer(secret string, timeout time.Duration) *tcpmd5.Dialer {
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(serverAddr, secret)}}
	d.Timeout = timeout
	d.LocalAddr = localAddr(keyedPeer)
	return d
}

// echo copies back what each connection sends until ln closes.
func echo(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.Copy(c, c)
		})
	}
}

type dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

func rightKey(ctx context.Context, addr string) Result {
	return echoes(ctx, "self-test: right key", signedDialer(rightSecret, 5*time.Second), addr,
		"signed handshake and echo from "+keyedPeer+" to "+addr)
}

// echoes is the check named check that d connects to the echo listener at
// addr and gets its ping back; detail says what that proved.
func echoes(ctx context.Context, check string, d *tcpmd5.Dialer, addr, detail string) Result {
	r := Result{Check: check}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		r.Status, r.Value, r.Detail = StatusFail, "no connection", err.Error()
		return r
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(selfTestPing))
	_, err = io.WriteString(c, selfTestPing)
	if err == nil {
		_, err = io.ReadFull(c, buf)
	}
	if err != nil || string(buf) != selfTestPing {
		r.Status, r.Value, r.Detail = StatusFail, "no echo", fmt.Sprintf("connected, but the echo failed: %v", err)
		return r
	}
	r.Status, r.Value, r.Detail = StatusOK, "connects", detail
	return r
}

// refused requires d's dial to end in the silence of a dropped SYN.
func refused(ctx context.Context, name string, d dialer, addr, why string) Result {
	r := Result{Check: name}
	c, err := d.DialContext(ctx, "tcp", addr)
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		r.Status, r.Value, r.Detail = StatusFail, "connects", "the listener should have dropped this SYN but accepted it"
	case errors.As(err, &ne) && ne.Timeout():
		r.Status, r.Value, r.Detail = StatusOK, "refused", why
	default:
		r.Status, r.Value, r.Detail = StatusFail, "error", err.Error()
	}
	return r
}

// unsignedPeer connects without a signature from a peer no key covers: the
// kernel completes the handshake, and the listener's Accept resets it.
func unsignedPeer(ctx context.Context, ln *tcpmd5.Listener, addr string, wait time.Duration) Result {
	r := Result{Check: "self-test: unsigned peer"}
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: localAddr(unkeyedPeer)}
	c, err := d.DialContext(ctx, "tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		// The reset came before connect(2) returned: a reset in SYN-SENT
		// would be ECONNREFUSED, so the handshake had completed.
	case err != nil:
		r.Status, r.Value, r.Detail = StatusFail, "error", err.Error()
		return r
	default:
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(max(wait, time.Second)))
		_, err = c.Read(make([]byte, 1))
	}
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) || ln.RefusedUnsigned() == 0 {
		r.Status, r.Value, r.Detail = StatusFail, "served", fmt.Sprintf("the listener kept a connection from %s, which no key covers (read: %v)", unkeyedPeer, err)
		return r
	}
	r.Status, r.Value, r.Detail = StatusOK, "refused", "the listener reset the unsigned connection from "+unkeyedPeer+", which no key covers (listener policy)"
	return r
}
