package testnet

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// Net is one test's network: the hosts and links it made.
type Net struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	links  int
}

// Host is a network namespace.
type Host struct {
	Name string // the namespace's name, as ip netns knows it
	net  *Net
}

// Iface is one end of a veth pair, inside a host.
type Iface struct {
	Host  *Host
	Name  string
	Addr4 netip.Addr // the end's IPv4 address, in a /29
	Addr6 netip.Addr // the end's IPv6 address, in a /64
	Peer  *Iface     // the other end
}

var seq atomic.Uint64

// New returns an empty network whose namespaces are removed when t ends. It
// skips t, or fails it under CI, without root or ip(8).
func New(t testing.TB) *Net {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "iproute2")
	sweepOnce.Do(sweep)
	return &Net{t: t, prefix: fmt.Sprintf("md5t-%d-%d", os.Getpid(), seq.Add(1))}
}

var sweepOnce sync.Once

// sweep deletes the namespaces that test processes which no longer run
// left behind when they crashed.
func sweep() {
	names, _ := os.ReadDir("/run/netns")
	for _, e := range names {
		rest, ok := strings.CutPrefix(e.Name(), "md5t-")
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if n, err := strconv.Atoi(pid); err == nil && n > 0 && syscall.Kill(n, 0) == syscall.ESRCH {
			(&Host{Name: e.Name()}).Delete()
		}
	}
}

// Host makes a host named name (at most 5 characters, to keep namespace
// names short) with its loopback interface up.
func (n *Net) Host(name string) *Host {
	n.t.Helper()
	h := &Host{Name: n.prefix + "-" + name, net: n}
	n.ip("netns", "add", h.Name)
	n.t.Cleanup(func() { h.Delete() })
	n.ip("-n", h.Name, "link", "set", "lo", "up")
	// Addresses are ours alone: no duplicate address detection, which
	// would hold IPv6 link-local addresses, and with them neighbor
	// discovery, back for a second or more.
	if hasIPv6() {
		h.Sysctl(n.t, "ipv6/conf/all/accept_dad", "0")
		h.Sysctl(n.t, "ipv6/conf/default/accept_dad", "0")
	}
	return h
}

// hasIPv6 reports whether the kernel has IPv6; without it, hosts and links
// are IPv4 only and the Addr6 of every Iface is the zero Addr.
func hasIPv6() bool {
	ok, _, _ := testenv.Has(testenv.IPv6)
	return ok
}

// Link joins a and b with a veth pair and gives the ends the next free
// addresses: link k (counting from 0) holds 192.0.2.8k+1/29 and
// 2001:db8:0:k::1/64 on a's end, .8k+2 and ::2 on b's (no IPv6 addresses
// on a kernel without IPv6).
func (n *Net) Link(a, b *Host) (*Iface, *Iface) {
	n.t.Helper()
	n.mu.Lock()
	k := n.links
	n.links++
	n.mu.Unlock()
	if k >= 32 {
		n.t.Fatalf("testnet: more than 32 links in one network")
	}
	ia := &Iface{Host: a, Name: "v" + strconv.Itoa(k) + "a",
		Addr4: netip.AddrFrom4([4]byte{192, 0, 2, byte(8*k + 1)}),
		Addr6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 6: byte(k >> 8), 7: byte(k), 15: 1})}
	ib := &Iface{Host: b, Name: "v" + strconv.Itoa(k) + "b",
		Addr4: ia.Addr4.Next(), Addr6: ia.Addr6.Next()}
	ia.Peer, ib.Peer = ib, ia
	if !hasIPv6() {
		ia.Addr6, ib.Addr6 = netip.Addr{}, netip.Addr{}
	}
	n.ip("-n", a.Name, "link", "add", ia.Name, "type", "veth", "peer", "name", ib.Name, "netns", b.Name)
	for _, i := range []*Iface{ia, ib} {
		n.ip("-n", i.Host.Name, "addr", "add", i.Addr4.String()+"/29", "dev", i.Name)
		if i.Addr6.IsValid() {
			n.ip("-n", i.Host.Name, "addr", "add", i.Addr6.String()+"/64", "dev", i.Name, "nodad")
		}
		n.ip("-n", i.Host.Name, "link", "set", i.Name, "up")
	}
	ia.waitUp(n.t)
	ib.waitUp(n.t)
	return ia, ib
}

// waitUp waits until the kernel reports i's operational state UP: until
// then (up to a second after the link goes up) it drops what i sends.
func (i *Iface) waitUp(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", i.Host.Name, "-o", "link", "show", "dev", i.Name).Output()
		if err == nil && strings.Contains(string(out), " state UP ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testnet: %s in %s is not up after 5s: %s", i.Name, i.Host.Name, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Pair returns two hosts joined by one link: a's end 192.0.2.1 and
// 2001:db8::1, b's 192.0.2.2 and 2001:db8::2.
func Pair(t testing.TB) (a, b *Iface) {
	t.Helper()
	n := New(t)
	return n.Link(n.Host("a"), n.Host("b"))
}

// Routed returns hosts a and b, each linked to router r, which forwards
// between them and accepts packets from any source on any link (no reverse
// path filter), as a router in the middle of the Internet does. It returns
// a's and b's ends of their links: a is 192.0.2.1 and 2001:db8::1, b is
// 192.0.2.9 and 2001:db8:0:1::1; both route everything through r.
func Routed(t testing.TB) (n *Net, a, b *Iface, r *Host) {
	t.Helper()
	n = New(t)
	ha, hb := n.Host("a"), n.Host("b")
	r = n.Host("r")
	sysctls := []string{"ipv4/ip_forward", "ipv4/conf/all/rp_filter", "ipv4/conf/default/rp_filter"}
	if hasIPv6() {
		sysctls = append(sysctls, "ipv6/conf/all/forwarding", "ipv6/conf/default/forwarding")
	}
	for _, f := range sysctls {
		v := "1"
		if strings.HasSuffix(f, "rp_filter") {
			v = "0"
		}
		r.Sysctl(t, f, v)
	}
	return n, n.Attach(ha, r), n.Attach(hb, r), r
}

// Attach links h to router r and routes all of h's traffic through r. It
// returns h's end of the link.
func (n *Net) Attach(h, r *Host) *Iface {
	n.t.Helper()
	ih, ir := n.Link(h, r)
	n.ip("-n", h.Name, "route", "add", "default", "via", ir.Addr4.String())
	if ir.Addr6.IsValid() {
		n.ip("-n", h.Name, "-6", "route", "add", "default", "via", ir.Addr6.String())
	}
	return ih
}

// Sysctl writes value to /proc/sys/net/name inside h.
func (h *Host) Sysctl(t testing.TB, name, value string) {
	t.Helper()
	err := h.Do(func() error {
		return os.WriteFile("/proc/sys/net/"+name, []byte(value), 0)
	})
	if err != nil {
		t.Fatalf("testnet: sysctl net/%s=%s in %s: %v", name, value, h.Name, err)
	}
}

// IP runs ip(8) with args inside h and fails t if it fails.
func (h *Host) IP(t testing.TB, args ...string) {
	t.Helper()
	h.net.ip(append([]string{"-n", h.Name}, args...)...)
}

// Delete removes h's namespace after killing every process in it. It is
// safe to call more than once; a test that deletes a host calls it itself.
func (h *Host) Delete() {
	pids, _ := exec.Command("ip", "netns", "pids", h.Name).Output()
	for _, f := range strings.Fields(string(pids)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = exec.Command("ip", "netns", "del", h.Name).Run()
}

// Command returns cmd with args to run inside h (through ip netns exec).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

// Do runs f on a thread that has entered h's namespace, and returns its
// error. Sockets f makes belong to h for their whole life. The thread goes
// back to its own namespace afterwards, or, if it cannot, is never used
// again. f must not call t.FailNow and friends: it does not run on the
// test's goroutine.
func (h *Host) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("testnet: opening this thread's namespace: %w", err)
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open("/run/netns/"+h.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testnet: opening namespace %s: %w", h.Name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("testnet: entering namespace %s: %w", h.Name, err)
			return // the thread stays locked, so no one else uses it
		}
		defer func() {
			if unix.Setns(home, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		errc <- f()
	}()
	return <-errc
}

// WaitFor calls cond inside h every 20ms until it reports true, and fails t
// with what if that takes longer than within.
func (h *Host) WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var ok bool
		if err := h.Do(func() error { ok = cond(); return nil }); err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testnet: in %s, %s did not happen within %v", h.Name, what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *Net) ip(args ...string) {
	n.t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("testnet: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
}

// SetUp brings i up or down, as a cable pulled and plugged back in; up
// returns once the kernel has i, and its peer, up again.
func (i *Iface) SetUp(t testing.TB, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	i.Host.IP(t, "link", "set", i.Name, state)
	if up {
		i.waitUp(t)
		i.Peer.waitUp(t)
	}
}
