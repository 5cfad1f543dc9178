package bench

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

func requireMD5(t *testing.T) {
	t.Helper()
	if !tcpmd5.Supported() {
		testenv.Missing(t, "this kernel does not sign TCP segments (no CONFIG_TCP_MD5SIG, or a sandbox)", "run the tests on a Linux kernel with CONFIG_TCP_MD5SIG=y")
	}
}

func variant(t *testing.T, name string) Variant {
	t.Helper()
	vs, err := Variants(name)
	require.NoError(t, err)
	return vs[0]
}

func serve(t *testing.T, v Variant, keys int) string {
	t.Helper()
	ln, err := v.Listen(ListenerKeys(keys))
	require.NoError(t, err)
	t.Cleanup(Serve(ln))
	return ln.Addr().String()
}

func protocol(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var p int
	var perr error
	require.NoError(t, rc.Control(func(fd uintptr) { p, perr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }))
	require.NoError(t, perr)
	return p
}

// TestVariantsInteroperate shows that the baseline and tcpmd5 sign with the
// same key, each side talking to the other, over plain TCP sockets.
func TestVariantsInteroperate(t *testing.T) {
	requireMD5(t)
	for _, server := range []string{TCPMD5, XSys} {
		for _, client := range []string{TCPMD5, XSys} {
			t.Run(client+" to "+server, func(t *testing.T) {
				addr := serve(t, variant(t, server), 1)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := variant(t, client).Dial(ctx, addr)
				require.NoError(t, err)
				defer c.Close()
				assert.Equal(t, unix.IPPROTO_TCP, protocol(t, c), "the connection is not plain TCP")
				_, err = RoundTrip(ctx, variant(t, client).Dial, addr)
				require.NoError(t, err)
			})
		}
	}
}

// TestKeyedVariantsRefuseUnsigned shows that the MD5 variants really
// install keys: the kernel drops an unsigned SYN, so the dial times out.
func TestKeyedVariantsRefuseUnsigned(t *testing.T) {
	requireMD5(t)
	for _, server := range []string{TCPMD5, XSys} {
		t.Run(server, func(t *testing.T) {
			t.Parallel()
			addr := serve(t, variant(t, server), 1)
			ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			defer cancel()
			c, err := variant(t, Plain).Dial(ctx, addr)
			if c != nil {
				c.Close()
			}
			require.Error(t, err, "an unsigned dial reached a keyed listener")
			var ne net.Error
			require.True(t, errors.As(err, &ne) && ne.Timeout(), "want a timeout, got %v", err)
		})
	}
}

func TestPlainVariantIsTCP(t *testing.T) {
	t.Parallel()
	v := variant(t, Plain)
	addr := serve(t, v, 0)
	c, err := v.Dial(context.Background(), addr)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, unix.IPPROTO_TCP, protocol(t, c))
	_, err = v.Listen(ListenerKeys(1))
	assert.Error(t, err, "the plain variant took a key")
}

func TestListenerKeys(t *testing.T) {
	t.Parallel()
	keys := ListenerKeys(900)
	require.Len(t, keys, 900)
	assert.Equal(t, ClientKey.Peer, keys[0].Peer)
	seen := map[string]bool{}
	for _, k := range keys {
		assert.True(t, k.Peer.Addr().Is4() && k.Peer.Addr().As4()[0] == 127 && k.Peer.Addr().As4()[1] == 6, "%s is outside 127.6.0.0/16", k.Peer)
		assert.False(t, seen[k.Peer.String()], "%s twice", k.Peer)
		seen[k.Peer.String()] = true
	}
	assert.Empty(t, ListenerKeys(0))
}

// TestSetKeyCostKeepsKeys checks that the SetKey measurement leaves the
// listener's keys as they were: as many, and clients still connect.
func TestSetKeyCostKeepsKeys(t *testing.T) {
	requireMD5(t)
	for _, name := range []string{TCPMD5, XSys} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			v := variant(t, name)
			ln, err := v.Listen(ListenerKeys(10))
			require.NoError(t, err)
			stop := Serve(ln)
			t.Cleanup(stop)
			for _, batch := range []int{3, 4} {
				ns, err := SetKeyCosts([]Listener{ln}, 10, batch)
				require.NoError(t, err)
				require.Len(t, ns, 1)
				assert.Positive(t, ns[0])
				if tl, ok := ln.(*tcpmd5.Listener); ok {
					assert.Len(t, tl.Keys(), 10)
				}
				// The extra key is gone from the kernel too: adding it
				// once more and deleting it works, and deleting it twice
				// is an error for the raw socket.
				if xl, ok := ln.(xsysListener); ok {
					require.NoError(t, xl.RemoveKey(ClientKey))
					require.NoError(t, xl.SetKey(ClientKey))
					assert.ErrorIs(t, xl.RemoveKey(ExtraKey), unix.ENOENT, "the extra key stayed installed")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err = RoundTrip(ctx, v.Dial, ln.Addr().String())
				cancel()
				require.NoError(t, err, "the client's secret changed")
			}
		})
	}
}

// TestSetupRates checks that the endpoints take turns: each gets as many
// connections as the others, give or take the last turn.
func TestSetupRates(t *testing.T) {
	requireMD5(t)
	var eps []Endpoint
	for _, name := range VariantNames {
		v := variant(t, name)
		keys := 1
		if name == Plain {
			keys = 0
		}
		eps = append(eps, Endpoint{v, serve(t, v, keys)})
	}
	rates, lats, err := SetupRates(context.Background(), eps, 50*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, rates, 3)
	require.Len(t, lats, 3)
	for i := range eps {
		assert.Positive(t, rates[i])
		assert.Equal(t, len(lats[0]), len(lats[i]), "%s had its own number of turns", eps[i].Variant.Name)
		var spent time.Duration
		for _, l := range lats[i] {
			spent += l
		}
		assert.InDelta(t, float64(len(lats[i]))/spent.Seconds(), rates[i], 1e-6*rates[i])
	}
}

func TestBulkRate(t *testing.T) {
	requireMD5(t)
	for _, name := range VariantNames {
		t.Run(name, func(t *testing.T) {
			v := variant(t, name)
			keys := 1
			if name == Plain {
				keys = 0
			}
			addr := serve(t, v, keys)
			for _, conns := range []int{1, 3} {
				rate, err := BulkRate(context.Background(), v, addr, conns, 64<<10, 20*time.Millisecond)
				require.NoError(t, err)
				assert.Positive(t, rate)
			}
		})
	}
}

// TestRun runs the whole measurement, as briefly as it goes, and checks
// that the report holds every measurement with a positive value.
func TestRun(t *testing.T) {
	requireMD5(t)
	cfg := QuickConfig()
	cfg.Rounds = 2
	cfg.SetupTime = 40 * time.Millisecond
	cfg.BulkTime = 20 * time.Millisecond
	cfg.BulkSlices = 2
	cfg.HashTime = 5 * time.Millisecond
	cfg.SetKeyCalls = 50
	cfg.SetKeyBatch = 10
	// The baseline keys one socket, which older kernels' optmem_max
	// (20480 bytes) fills at about 150 keys.
	cfg.SetKey = []int{10, 100}
	cfg.Accept = []int{1, 10, 100}
	r, err := Run(context.Background(), cfg, nil)
	require.NoError(t, err)

	require.Len(t, r.Setup, 3)
	for _, s := range r.Setup {
		assert.Len(t, s.Rate.Runs, 2, s.Variant)
		assert.Positive(t, s.Rate.Min, s.Variant)
		assert.True(t, 0 < s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99, "%s percentiles %v %v %v", s.Variant, s.P50, s.P90, s.P99)
	}
	require.Len(t, r.Throughput, 3*len(cfg.BulkConns))
	for _, tp := range r.Throughput {
		assert.Positive(t, tp.MBps.Min, "%s %d", tp.Variant, tp.Conns)
	}
	require.Len(t, r.SetKey, 2*len(cfg.SetKey))
	for _, s := range r.SetKey {
		assert.Positive(t, s.Nanos.Min, "%s %d", s.Variant, s.Keys)
	}
	require.Len(t, r.Accept, 1+2*len(cfg.Accept))
	for _, a := range r.Accept {
		assert.Positive(t, a.Rate.Min, "%s %d", a.Variant, a.Keys)
	}
	assert.Positive(t, r.MD5.MBps.Min)
	require.Len(t, r.MD5.Bounds, len(cfg.BulkConns))
	require.Len(t, r.Targets, 2+len(cfg.BulkConns))
	for _, tg := range r.Targets {
		assert.Positive(t, tg.Ratio.Median, tg.Name)
	}
	assert.Equal(t, "linux", r.Machine.OS)
	assert.NotEmpty(t, r.Machine.Kernel)
}
