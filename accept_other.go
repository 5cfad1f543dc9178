//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"net"
	"sync"
	"time"
)

// fanIn is a group's only socket here: no socket takes keys, so a
// Listener never grows its group, and Accept waits in accept(2) itself.
type fanIn struct {
	first *shard
	lock  *sync.RWMutex
	judge func(*shard, *net.TCPConn) accepted
}

func newFanIn(lock *sync.RWMutex, judge func(*shard, *net.TCPConn) accepted) (*fanIn, error) {
	return &fanIn{lock: lock, judge: judge}, nil
}

func (f *fanIn) add(s *shard) error {
	if f.first == nil {
		f.first = s
	}
	return nil
}

func (f *fanIn) remove(*shard) {}

// accept takes the next connection of the socket and judges it.
func (f *fanIn) accept() (accepted, error) {
	c, err := f.first.accept()
	if err != nil {
		return accepted{}, err
	}
	f.lock.RLock()
	defer f.lock.RUnlock()
	return f.judge(f.first, c), nil
}

// push closes what no key change here can have judged.
func (f *fanIn) push(judged []accepted) {
	for _, a := range judged {
		a.close()
	}
}

func (f *fanIn) setDeadline(t time.Time) { _ = f.first.ln.SetDeadline(t) }

func (f *fanIn) close() {}
