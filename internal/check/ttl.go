package check

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// ttlSecurity reports whether sockets here can drop segments by their TTL
// (RFC 5082 GTSM): it opens listeners with TTL security of 1 hop on
// loopback, IPv4 and, where the host has it, IPv6.
func ttlSecurity(ctx context.Context) (Result, bool) {
	r := Result{Check: "TTL security"}
	lc := tcpmd5.ListenConfig{TTLSecurity: 1, AllowUnsigned: true}
	ln, err := lc.Listen(ctx, "tcp4", serverAddr+":0")
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "no", err.Error()
		if errors.Is(err, tcpmd5.ErrTTLSecurityUnsupported) {
			r.Detail += "; tcpmd5 -ttl-security and TTLSecurity will fail here"
		}
		return r, false
	}
	ln.Close()
	r.Status, r.Value = StatusOK, "yes"
	r.Detail = "IP_TTL and IP_MINTTL (RFC 5082 GTSM) on a listener"
	if ln6, err := lc.Listen(ctx, "tcp6", "[::1]:0"); err == nil {
		ln6.Close()
		r.Detail += "; IPV6_UNICAST_HOPS and IPV6_MINHOPCOUNT too"
	} else if errors.Is(err, tcpmd5.ErrTTLSecurityUnsupported) {
		r.Status, r.Value, r.Detail = StatusWarn, "IPv4 only", r.Detail+"; IPv6: "+err.Error()
	}
	return r, true
}

// ttlSelfTest runs a keyed listener with TTL security of 1 hop on loopback
// and dials it signed twice: with TTL security, which sends with TTL 255,
// and without, which sends with the default TTL (64) and must be dropped.
func ttlSelfTest(ctx context.Context, refusal time.Duration) []Result {
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(keyedPeer, rightSecret)}, TTLSecurity: 1}
	ln, err := lc.Listen(ctx, "tcp4", serverAddr+":0")
	if err != nil {
		return []Result{{Check: "self-test: TTL security", Status: StatusFail, Value: "no listener", Detail: err.Error()}}
	}
	var wg sync.WaitGroup
	wg.Go(func() { echo(ln) })
	defer wg.Wait()
	defer ln.Close()
	addr := ln.Addr().String()

	results := make([]Result, 2)
	var dials sync.WaitGroup
	dials.Go(func() { results[0] = ttlConnects(ctx, addr) })
	dials.Go(func() { results[1] = ttlRefused(ctx, addr, refusal) })
	dials.Wait()
	return results
}

func ttlConnects(ctx context.Context, addr string) Result {
	d := signedDialer(rightSecret, 5*time.Second)
	d.TTLSecurity = 1
	return echoes(ctx, "self-test: TTL security", d, addr,
		"signed handshake and echo with TTL 255 both ways, to a listener that takes peers at most 1 hop away")
}

// ttlRefused requires a signed dial with the default TTL to end in the
// silence of a dropped SYN, and the kernel to count the drop where this
// thread can read the counters.
func ttlRefused(ctx context.Context, addr string, refusal time.Duration) Result {
	before, berr := netstat.Read()
	r := refused(ctx, "self-test: default TTL", signedDialer(rightSecret, refusal), addr,
		"the listener with TTL security of 1 hop dropped our signed SYN, sent with the default TTL")
	if r.Status != StatusOK || berr != nil {
		return r
	}
	after, err := netstat.Read()
	if err != nil {
		return r
	}
	if n := before.Delta(after, netstat.MinTTLDrop)[netstat.MinTTLDrop]; n > 0 {
		r.Detail += fmt.Sprintf(" (%s +%d)", netstat.MinTTLDrop, n)
	} else {
		r.Status, r.Value = StatusFail, "no answer"
		r.Detail = "the dial timed out, but the kernel counted no " + netstat.MinTTLDrop + ": something else dropped the SYN"
	}
	return r
}
