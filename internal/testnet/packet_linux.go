package testnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TCP flags, as in the TCP header.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Segment is a TCP segment as it crossed the wire.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Window   uint16
	Options  []Option // in the order of the header
	Payload  []byte
	// RawOptions are the option bytes RawSocket.Send puts after the
	// header, a multiple of 4 long; captured segments leave it nil.
	RawOptions []byte
	// TCP is a captured segment as it crossed the wire, header, options
	// and payload.
	TCP []byte
}

// Option is one TCP option: its kind, its length byte (1 for the one-byte
// options, End of Option List and No-Operation), and where it starts in
// the segment's TCP bytes.
type Option struct {
	Kind, Len uint8
	At        int
}

// MD5 reports whether s carries an RFC 2385 signature option: kind 19,
// length 18.
func (s Segment) MD5() bool {
	for _, o := range s.Options {
		if o.Kind == 19 && o.Len == 18 {
			return true
		}
	}
	return false
}

// End returns the sequence number that follows s: Seq plus the payload and
// one for each of SYN and FIN.
func (s Segment) End() uint32 {
	n := s.Seq + uint32(len(s.Payload))
	if s.Flags&SYN != 0 {
		n++
	}
	if s.Flags&FIN != 0 {
		n++
	}
	return n
}

func (s Segment) String() string {
	flags := ""
	for i, name := range []string{"F", "S", "R", "P", "."} {
		if s.Flags&(1<<i) != 0 {
			flags += name
		}
	}
	return fmt.Sprintf("%s > %s [%s] seq %d ack %d len %d options %v", s.Src, s.Dst, flags, s.Seq, s.Ack, len(s.Payload), s.Options)
}

// Capture records the TCP segments that cross one interface, in both
// directions, through an AF_PACKET socket in the interface's namespace.
type Capture struct {
	fd   int
	mu   sync.Mutex
	segs []Segment
	stop chan struct{}
	done chan struct{}
}

// Capture starts recording the TCP segments that cross i; it stops when t
// ends.
func (i *Iface) Capture(t testing.TB) *Capture {
	t.Helper()
	c := &Capture{stop: make(chan struct{}), done: make(chan struct{})}
	err := i.Host.Do(func() error {
		ifi, err := net.InterfaceByName(i.Name)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(c.fd)
			return err
		}
		if err := unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(c.fd)
			return fmt.Errorf("binding to %s: %w", i.Name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testnet: capturing on %s in %s: %v", i.Name, i.Host.Name, err)
	}
	go c.run()
	t.Cleanup(func() {
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
	})
	return c
}

func (c *Capture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // the receive timeout, to look at stop
		}
		if s, ok := parseFrame(buf[:n]); ok {
			c.mu.Lock()
			c.segs = append(c.segs, s)
			c.mu.Unlock()
		}
	}
}

// Segments returns the segments recorded so far between the two endpoints,
// in both directions, in the order they crossed the interface.
func (c *Capture) Segments(a, b netip.AddrPort) []Segment {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Segment
	for _, s := range c.segs {
		if (s.Src == a && s.Dst == b) || (s.Src == b && s.Dst == a) {
			out = append(out, s)
		}
	}
	return out
}

// WaitFor waits until cond holds for the segments between a and b, and
// fails t with what if that takes longer than within.
func (c *Capture) WaitFor(t testing.TB, a, b netip.AddrPort, within time.Duration, what string, cond func([]Segment) bool) []Segment {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		segs := c.Segments(a, b)
		if cond(segs) {
			return segs
		}
		if time.Now().After(deadline) {
			t.Fatalf("testnet: %s did not cross the wire within %v; captured:\n%v", what, within, segs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parseFrame decodes an Ethernet frame that carries TCP over IPv4 or IPv6
// (without extension headers).
func parseFrame(f []byte) (Segment, bool) {
	if len(f) < 14 {
		return Segment{}, false
	}
	var s Segment
	var src, dst netip.Addr
	var tcp []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case unix.ETH_P_IP:
		ip := f[14:]
		if len(ip) < 20 || ip[9] != unix.IPPROTO_TCP {
			return Segment{}, false
		}
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if total > len(ip) || ihl > total {
			return Segment{}, false
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		tcp = ip[ihl:total]
	case unix.ETH_P_IPV6:
		ip := f[14:]
		if len(ip) < 40 || ip[6] != unix.IPPROTO_TCP {
			return Segment{}, false
		}
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+plen > len(ip) {
			return Segment{}, false
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		tcp = ip[40 : 40+plen]
	default:
		return Segment{}, false
	}
	if len(tcp) < 20 {
		return Segment{}, false
	}
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return Segment{}, false
	}
	s.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:]))
	s.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:]))
	s.Seq = binary.BigEndian.Uint32(tcp[4:])
	s.Ack = binary.BigEndian.Uint32(tcp[8:])
	s.Flags = tcp[13]
	s.Window = binary.BigEndian.Uint16(tcp[14:])
	for at := 20; at < off; {
		kind := tcp[at]
		if kind == 0 || kind == 1 {
			s.Options = append(s.Options, Option{Kind: kind, Len: 1, At: at})
			at++
			continue
		}
		if at+1 >= off || tcp[at+1] < 2 || at+int(tcp[at+1]) > off {
			s.Options = append(s.Options, Option{Kind: kind, At: at}) // malformed: recorded, never matched as MD5
			break
		}
		s.Options = append(s.Options, Option{Kind: kind, Len: tcp[at+1], At: at})
		at += int(tcp[at+1])
	}
	s.Payload = append([]byte(nil), tcp[off:]...)
	s.TCP = append([]byte(nil), tcp...)
	return s, true
}

// Inject sends s from inside h as a raw IP packet, with whatever source
// address s names, as an attacker who spoofs a peer does.
func (h *Host) Inject(s Segment) error {
	return h.Do(func() error {
		r, err := NewRawSocket()
		if err != nil {
			return err
		}
		defer r.Close()
		return r.Send(s)
	})
}

// RawSocket sends segments as raw IP packets, with any source address, from
// the namespace it was made in.
type RawSocket struct{ fd4, fd6 int }

// NewRawSocket opens raw sockets for IPv4 and, where the namespace has it,
// IPv6 in the caller's network namespace.
func NewRawSocket() (*RawSocket, error) {
	fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("testnet: raw socket: %w", err)
	}
	fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		fd6 = -1
	}
	return &RawSocket{fd4, fd6}, nil
}

// Close closes the sockets.
func (r *RawSocket) Close() error {
	unix.Close(r.fd4)
	if r.fd6 >= 0 {
		unix.Close(r.fd6)
	}
	return nil
}

// Send sends s, with s.RawOptions after its header, and the checksum
// computed.
func (r *RawSocket) Send(s Segment) error {
	if s.Src.Addr().Is4() != s.Dst.Addr().Is4() {
		return errors.New("testnet: a segment between IPv4 and IPv6 addresses")
	}
	if len(s.RawOptions)%4 != 0 || len(s.RawOptions) > 40 {
		return fmt.Errorf("testnet: %d bytes of options: want a multiple of 4, at most 40", len(s.RawOptions))
	}
	hl := 20 + len(s.RawOptions)
	tcp := make([]byte, hl+len(s.Payload))
	binary.BigEndian.PutUint16(tcp[0:], s.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.Seq)
	binary.BigEndian.PutUint32(tcp[8:], s.Ack)
	tcp[12] = byte(hl/4) << 4
	tcp[13] = s.Flags
	binary.BigEndian.PutUint16(tcp[14:], s.Window)
	copy(tcp[20:], s.RawOptions)
	copy(tcp[hl:], s.Payload)
	src, dst := s.Src.Addr().AsSlice(), s.Dst.Addr().AsSlice()
	pseudo := append(append(append([]byte(nil), src...), dst...), 0, unix.IPPROTO_TCP, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))

	var pkt []byte
	var to unix.Sockaddr
	fd := r.fd4
	if s.Src.Addr().Is4() {
		to = &unix.SockaddrInet4{Addr: s.Dst.Addr().As4()}
		pkt = make([]byte, 20, 20+len(tcp))
		pkt[0] = 0x45
		binary.BigEndian.PutUint16(pkt[2:], uint16(20+len(tcp)))
		pkt[6] = 0x40 // don't fragment
		pkt[8] = 64
		pkt[9] = unix.IPPROTO_TCP
		copy(pkt[12:], src)
		copy(pkt[16:], dst)
		// The kernel fills in the ID and the header checksum.
	} else {
		if r.fd6 < 0 {
			return errors.New("testnet: no IPv6 raw socket in this namespace")
		}
		fd = r.fd6
		to = &unix.SockaddrInet6{Addr: s.Dst.Addr().As16()}
		pkt = make([]byte, 40, 40+len(tcp))
		pkt[0] = 0x60
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(tcp)))
		pkt[6] = unix.IPPROTO_TCP
		pkt[7] = 64
		copy(pkt[8:], src)
		copy(pkt[24:], dst)
	}
	pkt = append(pkt, tcp...)
	if err := unix.Sendto(fd, pkt, 0, to); err != nil {
		return fmt.Errorf("testnet: sending a raw segment: %w", err)
	}
	return nil
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
