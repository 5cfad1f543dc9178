package check

import (
	"context"
	"net/netip"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// The AO self-test's peer, KeyIDs and algorithm.
const (
	aoPeer      = "127.0.0.4"
	aoAlgorithm = "hmac(sha1)"
)

// aoSelfTest runs a listener with an AO key on loopback: the right key
// connects and echoes, a wrong secret is refused.
func aoSelfTest(ctx context.Context, refusal time.Duration) []Result {
	k := func(peer string, send, recv uint8, secret string) tcpmd5.AOKey {
		a := netip.MustParseAddr(peer)
		return tcpmd5.AOKey{Peer: netip.PrefixFrom(a, 32), SendID: send, RecvID: recv, Algorithm: aoAlgorithm, Secret: []byte(secret)}
	}
	lc := tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{k(aoPeer, 1, 2, rightSecret)}}
	ln, err := lc.Listen(ctx, "tcp4", serverAddr+":0")
	if err != nil {
		return []Result{{Check: "self-test: TCP-AO", Status: StatusFail, Value: "no listener", Detail: err.Error()}}
	}
	done := make(chan struct{})
	go func() { echo(ln); close(done) }()
	defer func() { ln.Close(); <-done }()
	addr := ln.Addr().String()
	dialer := func(secret string, timeout time.Duration) *tcpmd5.Dialer {
		d := &tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{k(serverAddr, 2, 1, secret)}}
		d.Timeout = timeout
		d.LocalAddr = localAddr(aoPeer)
		return d
	}
	return []Result{
		echoes(ctx, "self-test: TCP-AO right key", dialer(rightSecret, 5*time.Second), addr, "TCP-AO handshake ("+aoAlgorithm+") and echo from "+aoPeer+" to "+addr),
		refused(ctx, "self-test: TCP-AO wrong key", dialer(wrongSecret, refusal), addr, "the listener dropped our SYN whose MAC used another secret"),
	}
}
