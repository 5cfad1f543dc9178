package tcpmd5

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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
