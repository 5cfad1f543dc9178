package tcpmd5

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// accepted is a connection, judged, or an error, from one socket of the
// group.
type accepted struct {
	c     *net.TCPConn
	admit bool // the Accept policy hands c over
	err   error

	// An unsigned connection admitted because no key covered its peer:
	// Accept asks again when it hands it over.
	unsigned bool
	peer     netip.Addr
	l3index  int
}

// fanIn hands Accept the connections that the sockets of a group accept,
// judged: one goroutine per socket sends, and Accept takes them until the
// fan-in is closed or its deadline passes.
type fanIn struct {
	conns    chan accepted
	done     chan struct{} // closed by close
	deadline *deadline
}

func newFanIn() fanIn {
	return fanIn{conns: make(chan accepted), done: make(chan struct{}), deadline: newDeadline()}
}

// next returns the next connection from any socket of the group, or its
// error; net.ErrClosed once closed, os.ErrDeadlineExceeded once the
// deadline has passed.
func (f *fanIn) next() (accepted, error) {
	expired := f.deadline.wait()
	select { // a closed listener or a past deadline wins over a waiting connection
	case <-f.done:
		return accepted{}, net.ErrClosed
	case <-expired:
		return accepted{}, os.ErrDeadlineExceeded
	default:
	}
	select {
	case a := <-f.conns:
		return a, a.err
	case <-f.done:
		return accepted{}, net.ErrClosed
	case <-expired:
		return accepted{}, os.ErrDeadlineExceeded
	}
}

// handOver gives a to Accept, or closes it once the fan-in is closed; it
// reports whether the fan-in is still open.
func (f *fanIn) handOver(a accepted) bool {
	select {
	case f.conns <- a:
		return true
	case <-f.done:
		if a.c != nil {
			a.c.Close()
		}
		return false
	}
}

// close makes next and handOver return at once from now on. Call it once.
func (f *fanIn) close() { close(f.done) }

// deadline is a deadline that no single socket holds, Accept's over the
// group: a channel that is closed once the deadline has passed, replaced
// when the deadline moves, in the manner of net's pipe deadlines.
type deadline struct {
	mu      sync.Mutex
	timer   *time.Timer
	expired chan struct{}
}

func newDeadline() *deadline { return &deadline{expired: make(chan struct{})} }

// set moves the deadline to t; the zero t means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.expired // the timer fired: wait until its function has closed it
	}
	d.timer = nil
	select {
	case <-d.expired:
		d.expired = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.expired)
		return
	}
	expired := d.expired
	d.timer = time.AfterFunc(wait, func() { close(expired) })
}

// wait returns a channel that is closed when the deadline passes.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

// acceptFrom starts the goroutine that accepts on s for Accept until the
// socket is closed.
func (l *Listener) acceptFrom(s *shard) {
	go func() {
		for {
			a := l.acceptOne(s)
			if s.closed.Load() || !l.fan.handOver(a) {
				return
			}
		}
	}()
}

// acceptOne takes the next connection off the queue of s and judges it,
// with no key change in between: key changes hold l.mu, and the queue is
// read with l.mu read-locked.
func (l *Listener) acceptOne(s *shard) accepted {
	release, err := waitQueued(s.qrc, &l.mu)
	if err == nil {
		defer release()
		var c *net.TCPConn
		if c, err = s.ln.AcceptTCP(); err == nil {
			return l.judge(s, c, nil)
		}
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return accepted{err: err}
}

// judge decides whether Accept hands over connection c, which socket s
// accepted: if the kernel verified its handshake with a key, or if c is
// unsigned, unsigned peers are allowed and no key covers its peer (which
// Accept asks again when it hands c over). l.mu is held, for reading at
// least.
//
// The invariant that makes this exact: every connection in the accept
// queue of s completed its handshake after the last change to which peers
// the MD5 keys of s cover, because each such change takes the queue's
// connections off it (drainMD5). The kernel completes no unsigned
// handshake with a covered peer, and copies the key to every verified one,
// so c was verified if and only if the keys of s cover its peer now. For c
// taken off the queue during a change, during holds the keys added or
// removed: a peer whose cover that change flipped is asked of c's own key
// (md5Held). Whatever cannot be read is refused.
func (l *Listener) judge(s *shard, c *net.TCPConn, during []Key) accepted {
	refuse := accepted{c: c}
	rc, err := c.SyscallConn()
	if err != nil {
		return refuse
	}
	if l.aoKeyed { // else nothing could have signed it with AO, and no syscall need say so
		if ao, err := acceptedAO(rc); err != nil {
			return refuse
		} else if ao {
			return accepted{c: c, admit: true}
		}
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return refuse
	}
	addr, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return refuse
	}
	addr = addr.Unmap()
	l3index := 0
	if l.keys.interfaces() > 0 {
		if l3index, err = boundIfindex(rc); err != nil {
			return refuse
		}
	}
	signed := s.keys.md5.covers(addr, l3index)
	if k, ok := flipped(&s.keys.md5, during, addr, l3index); ok {
		if signed, err = md5Held(rc, addr, k.Ifindex, k.Secret); err != nil {
			return refuse
		}
	}
	switch {
	case signed:
		return accepted{c: c, admit: true}
	case l.allowUnsigned && !l.keys.covers(addr, l3index):
		return accepted{c: c, admit: true, unsigned: true, peer: addr, l3index: l3index}
	}
	return refuse
}

// stillUncovered reports whether no key covers the peer of a, an unsigned
// connection, now that Accept hands it over.
func (l *Listener) stillUncovered(a accepted) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return !l.keys.covers(a.peer, a.l3index)
}

// flipped returns the key of changed, added to t or removed from it, that
// alone decides whether t covers addr on l3index: the only key whose copy a
// connection from addr can hold if its handshake completed during the
// change. A peer no key of changed covers, or that other keys of t cover
// too, was covered or not before and after alike.
func flipped(t *keyTable[Key], changed []Key, addr netip.Addr, l3index int) (Key, bool) {
	for _, k := range changed {
		if k.Peer.Contains(addr) && (k.Ifindex == 0 || k.Ifindex == l3index) && !t.coversExcept(addr, l3index, k.id()) {
			return k, true
		}
	}
	return Key{}, false
}

// drainMD5 takes the connections queued on s off its queue and judges
// them, during being the MD5 keys just added to s or removed from it (nil
// before a change), and hands them to Accept; it keeps judge's invariant
// across a change to the peers the MD5 keys of s cover. A change that
// removes keys drains before (so that connections verified with them are
// judged signed) and after (for those that completed meanwhile); one that
// adds keys drains after. l.mu is held, so nothing else accepts on s, and
// accept(2) does not wait while the queue is not empty.
func (l *Listener) drainMD5(s *shard, during []Key) error {
	var judged []accepted
	var err error
	for queued(s.rc) {
		var c *net.TCPConn
		if c, err = s.ln.AcceptTCP(); err != nil {
			err = fmt.Errorf("tcpmd5: taking the connections that waited for a key change: %w", err)
			break
		}
		judged = append(judged, l.judge(s, c, during))
	}
	if len(judged) > 0 {
		go func() {
			for i, a := range judged {
				if !l.fan.handOver(a) {
					for _, rest := range judged[i+1:] {
						rest.c.Close()
					}
					return
				}
			}
		}()
	}
	return err
}
