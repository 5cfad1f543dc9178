package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// world is a network namespace of the test's own: gRPC dials from
// goroutines of its own, so each dial enters the namespace (Host.Do).
type world struct {
	t *testing.T
	h *testnet.Host
}

func newWorld(t *testing.T) world {
	testenv.RequireRoot(t)
	return world{t, testnet.New(t).Host("grpc")}
}

// listen serves the health service in the namespace with lc.
func (w world) listen(lc *tcpmd5.ListenConfig) *tcpmd5.Listener {
	var ln *tcpmd5.Listener
	require.NoError(w.t, w.h.Do(func() (err error) {
		ln, err = lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		return err
	}))
	srv := serve(ln)
	w.t.Cleanup(srv.Stop)
	return ln
}

// call makes one health check at target, within the time given, through a
// client whose connections d makes in the namespace.
func (w world) call(d *tcpmd5.Dialer, target string, within time.Duration) (healthpb.HealthCheckResponse_ServingStatus, error) {
	w.t.Helper()
	inside := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		if derr := w.h.Do(func() error { c, err = d.DialContext(ctx, network, addr); return nil }); derr != nil {
			return nil, derr
		}
		return c, err
	}
	cc, err := dial(inside, target)
	require.NoError(w.t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return check(ctx, cc)
}

// counters reads the namespace's TCP counters.
func (w world) counters() netstat.Counters {
	var c netstat.Counters
	require.NoError(w.t, w.h.Do(func() (err error) { c, err = netstat.Read(); return err }))
	return c
}

// requireFailed requires a call to have failed without an answer.
func requireFailed(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	assert.Contains(t, []codes.Code{codes.Unavailable, codes.DeadlineExceeded}, status.Code(err), "%v", err)
}

// TestGRPCOverMD5: the health service answers a client signing with the
// shared secret; a client with another secret gets no answer, and the
// server's kernel counts TCPMD5Failure; an unsigned client is reset by the
// Listener's Accept policy.
func TestGRPCOverMD5(t *testing.T) {
	testkit.RequireMD5(t)
	w := newWorld(t)
	ln := w.listen(&tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.0.0.2", testkit.SecretA)}})
	target := ln.Addr().String()

	st, err := w.call(testkit.Dialer("127.0.0.2", testkit.Key(t, "127.0.0.1", testkit.SecretA)), target, testkit.MustConnect)
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, st)

	before := w.counters()
	_, err = w.call(testkit.Dialer("127.0.0.2", testkit.Key(t, "127.0.0.1", testkit.SecretB)), target, 2*time.Second)
	requireFailed(t, err)
	assert.Positive(t, before.Delta(w.counters(), netstat.MD5Failure)[netstat.MD5Failure], "the wrong secret was not what the server's kernel dropped")

	refused := ln.RefusedUnsigned()
	_, err = w.call(testkit.Dialer("127.0.0.9"), target, 2*time.Second)
	requireFailed(t, err)
	assert.Greater(t, ln.RefusedUnsigned(), refused, "the unsigned client was not refused at Accept")
}

// TestGRPCOverAO, on a kernel with TCP-AO: the same service over TCP-AO,
// and a client whose key has another secret gets no answer (TCPAOBad).
func TestGRPCOverAO(t *testing.T) {
	testenv.Require(t, testenv.AO)
	w := newWorld(t)
	aoKey := func(peer, secret string) tcpmd5.AOKey {
		k, err := tcpmd5.ParseAOKey(peer, "send=1 recv=1 alg=hmac(sha256)", secret)
		require.NoError(t, err)
		return k
	}
	ln := w.listen(&tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey("127.0.0.2", testkit.SecretA)}})
	target := ln.Addr().String()
	client := func(secret string) *tcpmd5.Dialer {
		d := testkit.Dialer("127.0.0.2")
		d.AOKeys = []tcpmd5.AOKey{aoKey("127.0.0.1", secret)}
		return d
	}

	st, err := w.call(client(testkit.SecretA), target, testkit.MustConnect)
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, st)

	before := w.counters()
	_, err = w.call(client(testkit.SecretB), target, 2*time.Second)
	requireFailed(t, err)
	assert.Positive(t, before.Delta(w.counters(), netstat.AOBad)[netstat.AOBad], "the wrong secret was not what the server's kernel dropped")
}
