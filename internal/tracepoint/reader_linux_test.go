package tracepoint_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/tracepoint"
)

// TestReadMismatch makes the kernel drop a SYN signed with the wrong secret
// and reads the tcp:tcp_hash_md5_mismatch record it fires, filtered in the
// kernel by namespace cookie and port: the namespace cookie, the state, the
// addresses and ports, and the SYN flag all come out as the format says.
func TestReadMismatch(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.Require(t, testenv.Tracepoints)
	testenv.Netns(t)
	f, err := tracepoint.Load("tcp", "tcp_hash_md5_mismatch")
	require.NoError(t, err)

	ln := testkit.Listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.Key(t, "127.0.40.1", testkit.SecretA)}}, "tcp4", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	rc, err := ln.SyscallConn()
	require.NoError(t, err)
	var cookie uint64
	var cerr error
	require.NoError(t, rc.Control(func(fd uintptr) {
		cookie, cerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}))
	require.NoError(t, cerr)
	// Events are global: the kernel keeps only this namespace's, on this port.
	r, err := tracepoint.Open("net_cookie == "+strconv.FormatUint(cookie, 10)+" && dport == "+strconv.Itoa(port), 4, f)
	require.NoError(t, err)
	defer r.Close()

	// Nothing dropped yet: a Read ends with its context, and the next one
	// waits again.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = r.Read(short)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	testkit.DropDial(t, testkit.Dialer("127.0.40.1", testkit.Key(t, "127.0.0.1", testkit.SecretB)), "tcp4", ln.Addr().String(), "")

	ctx, cancel := context.WithTimeout(context.Background(), testkit.MustConnect)
	defer cancel()
	records, err := r.Read(ctx)
	require.NoError(t, err, "no mismatch record arrived")
	require.NotEmpty(t, records)
	rec := records[0]
	u16 := func(name string) uint16 { return binary.NativeEndian.Uint16(f.Bytes(rec, name)) }
	assert.Equal(t, cookie, binary.NativeEndian.Uint64(f.Bytes(rec, "net_cookie")), "the namespace's cookie")
	assert.EqualValues(t, 10, binary.NativeEndian.Uint32(f.Bytes(rec, "state")), "TCP_LISTEN")
	assert.EqualValues(t, port, u16("dport"))
	assert.EqualValues(t, syscall.AF_INET, u16("family"))
	assert.Equal(t, []byte{1}, f.Bytes(rec, "syn"))
	assert.Equal(t, []byte{0}, f.Bytes(rec, "ack"))
	saddr := f.Bytes(rec, "saddr") // a sockaddr_in: family, port (network order), address
	assert.EqualValues(t, syscall.AF_INET, binary.NativeEndian.Uint16(saddr[0:2]))
	assert.Equal(t, netip.MustParseAddr("127.0.40.1"), netip.AddrFrom4([4]byte(saddr[4:8])))
	assert.Equal(t, u16("sport"), binary.BigEndian.Uint16(saddr[2:4]))
	assert.Zero(t, r.Lost())
}

// TestOpenErrors: a ring size that is not a power of two is refused, and
// an event the kernel does not have says so.
func TestOpenErrors(t *testing.T) {
	testenv.Require(t, testenv.Tracepoints)
	f, err := tracepoint.Load("tcp", "tcp_hash_md5_mismatch")
	require.NoError(t, err)
	_, err = tracepoint.Open("", 3, f)
	require.ErrorContains(t, err, "power of two")
	_, err = tracepoint.Load("tcp", "md5t_no_such_event")
	require.ErrorIs(t, err, tracepoint.ErrNoTracepoint)
	_, err = tracepoint.Open("no_such_field == 1", 1, f)
	require.ErrorContains(t, err, "filter")
}

// TestReadClose: a Read that waits returns once the Reader is closed, with
// an error that matches net.ErrClosed, and so does every Read after.
func TestReadClose(t *testing.T) {
	testenv.Require(t, testenv.Tracepoints)
	f, err := tracepoint.Load("tcp", "tcp_hash_md5_mismatch")
	require.NoError(t, err)
	r, err := tracepoint.Open("dport == 1", 1, f)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(context.Background())
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it wait, most likely
	require.NoError(t, r.Close())
	select {
	case err := <-done:
		require.True(t, errors.Is(err, net.ErrClosed), "%v", err)
	case <-time.After(testkit.MustConnect):
		t.Fatal("Close did not end the Read")
	}
	_, err = r.Read(context.Background())
	require.ErrorIs(t, err, net.ErrClosed)
	require.NoError(t, r.Close(), "a second Close does nothing")
}
