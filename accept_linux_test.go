//go:build !tcpmd5stub

package tcpmd5

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestFanIn waits on two sockets at once, as Accept waits on a group: a
// connection to either is accepted and judged, with the lock read-held;
// one judged during a key change (push) comes first; a passed deadline
// wins over a waiting connection; a socket no longer watched hands
// nothing over; close ends a waiting accept and closes what was pending.
func TestFanIn(t *testing.T) {
	t.Parallel()
	var cfg net.ListenConfig
	cfg.SetMultipathTCP(false)
	var shards []*shard
	for range 2 {
		s, err := listenShard(context.Background(), cfg, "tcp4", "127.0.0.1:0", nil, nil)
		require.NoError(t, err)
		t.Cleanup(func() { s.close() })
		shards = append(shards, s)
	}
	var mu sync.RWMutex
	judge := func(s *shard, c *net.TCPConn) accepted {
		assert.False(t, mu.TryLock(), "judged with the lock read-held")
		return accepted{c: c, admit: true, l3index: shardIndex(shards, s)}
	}
	f, err := newFanIn(&mu, judge)
	require.NoError(t, err)
	t.Cleanup(f.close)
	for _, s := range shards {
		require.NoError(t, f.add(s))
	}
	dial := func(s *shard) net.Conn {
		c, err := net.DialTimeout("tcp4", s.ln.Addr().String(), time.Minute)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}

	dial(shards[1])
	dial(shards[0])
	seen := map[int]bool{}
	for range 2 {
		a, err := f.accept()
		require.NoError(t, err)
		seen[a.l3index] = true
		a.close()
	}
	assert.Equal(t, map[int]bool{0: true, 1: true}, seen, "one connection from each socket")

	dial(shards[0])
	f.push([]accepted{{admit: true, l3index: 7}})
	a, err := f.accept()
	require.NoError(t, err)
	assert.Equal(t, 7, a.l3index, "the pending connection first")
	f.setDeadline(time.Now().Add(-time.Second))
	_, err = f.accept()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a passed deadline wins over a waiting connection")
	f.setDeadline(time.Time{})
	a, err = f.accept()
	require.NoError(t, err, "the waiting connection, once the deadline is gone")
	assert.Zero(t, a.l3index)
	a.close()

	f.remove(shards[1])
	dial(shards[1])
	f.setDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = f.accept()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a socket no longer watched hands nothing over")
	f.setDeadline(time.Time{})

	done := make(chan error, 1)
	go func() {
		_, err := f.accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // most likely waiting by now
	f.close()
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(time.Minute):
		t.Fatal("close did not end a waiting accept")
	}
	_, err = f.accept()
	require.ErrorIs(t, err, net.ErrClosed)

	// What waits for Accept when it closes is closed: its peer reads EOF.
	f2, err := newFanIn(&mu, judge)
	require.NoError(t, err)
	require.NoError(t, f2.add(shards[0]))
	client := dial(shards[0])
	a, err = f2.accept()
	require.NoError(t, err)
	f2.push([]accepted{a})
	f2.close()
	require.NoError(t, client.SetReadDeadline(time.Now().Add(time.Minute)))
	_, err = client.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
}

func shardIndex(shards []*shard, s *shard) int {
	for i, o := range shards {
		if o == s {
			return i
		}
	}
	return -1
}

// TestCloseWhileAcceptWaitsForTheLock: Close returns while an accept is in
// its callback, about to take the listener's lock. Closing the fan-in
// waits for that callback, so Close must not hold the lock meanwhile.
func TestCloseWhileAcceptWaitsForTheLock(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	ln, err := Listen("tcp4", "127.0.0.1:0", Key{Peer: netip.MustParsePrefix("127.0.74.1/32"), Secret: fakeA})
	require.NoError(t, err)
	inCallback, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ln.fan.locking = func() {
		once.Do(func() {
			close(inCallback)
			<-release
		})
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	dialFrom(t, "127.0.74.1", ln.Addr().String(), fakeA)
	<-inCallback
	closed := make(chan error, 1)
	go func() { closed <- ln.Close() }()
	time.Sleep(100 * time.Millisecond) // Close is most likely waiting for the callback by now
	close(release)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return: it waits, holding the lock, for an accept that waits for the lock")
	}
	select {
	case <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
