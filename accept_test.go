package tcpmd5

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestDeadline moves Accept's deadline the ways SetDeadline can: none, in
// the past, in the future, and again while someone waits on it.
func TestDeadline(t *testing.T) {
	t.Parallel()
	d := newDeadline()
	assert.False(t, closed(d.wait()), "no deadline")

	d.set(time.Now().Add(-time.Second))
	assert.True(t, closed(d.wait()), "a past deadline has passed")
	d.set(time.Time{})
	assert.False(t, closed(d.wait()), "cleared")

	waiting := d.wait()
	d.set(time.Now().Add(time.Hour))
	d.set(time.Now().Add(20 * time.Millisecond)) // moved while waiting: the waiter sees it
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the moved deadline did not reach the waiter")
	}
	d.set(time.Now().Add(time.Hour))
	assert.False(t, closed(d.wait()), "a future deadline after a passed one")
	d.set(time.Now().Add(-time.Second))
	assert.True(t, closed(d.wait()))
}

// TestFanIn hands connections from several senders to one receiver, as
// the sockets of a group hand theirs to Accept, and ends it the two ways
// Accept ends: a passed deadline and close, each of which wins over a
// connection that waits, and after close a sender learns to stop.
func TestFanIn(t *testing.T) {
	t.Parallel()
	f := newFanIn()
	const senders, each = 4, 25
	for i := range senders {
		go func() {
			for j := range each {
				if !f.handOver(accepted{l3index: i*each + j}) {
					return
				}
			}
		}()
	}
	seen := make(map[int]bool)
	for range senders * each {
		a, err := f.next()
		require.NoError(t, err)
		seen[a.l3index] = true
	}
	assert.Len(t, seen, senders*each, "every connection arrived once")

	sent := make(chan bool)
	go func() { sent <- f.handOver(accepted{}) }()
	f.deadline.set(time.Now().Add(-time.Second))
	_, err := f.next()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a passed deadline wins over a waiting connection")
	f.deadline.set(time.Time{})
	a, err := f.next()
	require.NoError(t, err, "the waiting connection, once the deadline is gone")
	assert.Zero(t, a.l3index)
	assert.True(t, <-sent)

	go func() { sent <- f.handOver(accepted{}) }()
	f.close()
	_, err = f.next()
	require.ErrorIs(t, err, net.ErrClosed)
	assert.False(t, <-sent, "a sender learns that the fan-in is closed")
	assert.False(t, f.handOver(accepted{}))
}
