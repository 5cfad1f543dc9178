package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// maxKeys bounds the key-capacity measurement, far above what any default
// net.core.optmem_max holds.
const maxKeys = 1 << 16

// host examines the kernel on throwaway sockets that never connect.
func host() ([]Result, bool) {
	var out []Result
	platform := Result{Check: "platform", Status: StatusInfo, Value: runtime.GOOS + "/" + runtime.GOARCH}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		platform.Detail = "kernel " + unix.ByteSliceToString(uts.Release[:])
	}
	out = append(out, platform)

	err := withSocket(unix.AF_INET, func(f *os.File) error {
		return tcpmd5.SetKeys(f, mustKey("192.0.2.1/32"))
	})
	if err != nil {
		detail := err.Error()
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			detail += " (a security policy forbids the option; as root or outside the sandbox it may work)"
		}
		out = append(out, Result{Check: "signing", Status: StatusFail, Value: "no", Detail: detail})
		return out, false
	}
	out = append(out, Result{Check: "signing", Status: StatusOK, Value: "yes", Detail: "setsockopt TCP_MD5SIG accepted a key"})
	out = append(out, prefixKeys(), ifindexKeys(), mptcp(), optmem(), keysPerSocket(), steering())
	return out, true
}

func mustKey(prefix string) tcpmd5.Key {
	return tcpmd5.Key{Peer: netip.MustParsePrefix(prefix), Secret: []byte("tcpmd5-check")}
}

// withSocket runs fn on a new TCP socket of the family that never binds or
// connects.
func withSocket(family int, fn func(*os.File) error) error {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("making a throwaway socket: %w", os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), "throwaway TCP socket")
	defer f.Close()
	return fn(f)
}

func prefixKeys() Result {
	r := Result{Check: "prefix keys"}
	err := withSocket(unix.AF_INET, func(f *os.File) error {
		return tcpmd5.SetKeys(f, mustKey("192.0.2.0/24"))
	})
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "no", err.Error()
		return r
	}
	r.Status, r.Value, r.Detail = StatusOK, "yes", "TCP_MD5SIG_EXT with TCP_MD5SIG_FLAG_PREFIX (Linux 4.13+)"
	return r
}

// ifindexKeys finds out whether the kernel knows TCP_MD5SIG_FLAG_IFINDEX
// and which interfaces it takes. Linux 5.6+ takes only VRF (L3 master)
// devices and refuses others, loopback always, with EINVAL; older kernels
// ignore the flag and accept any index, loopback's included.
func ifindexKeys() Result {
	r := Result{Check: "interface keys"}
	ifs, err := net.Interfaces()
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "unknown", "listing interfaces: "+err.Error()
		return r
	}
	var vrfs []string
	loRefused, loSeen := false, false
	var other error
	for _, ifi := range ifs {
		k := mustKey("192.0.2.1/32")
		k.Ifindex = ifi.Index
		err := withSocket(unix.AF_INET, func(f *os.File) error { return tcpmd5.SetKeys(f, k) })
		switch {
		case err == nil && ifi.Flags&net.FlagLoopback == 0:
			vrfs = append(vrfs, ifi.Name)
		case err == nil:
			loSeen = true
		case errors.Is(err, unix.EINVAL) && ifi.Flags&net.FlagLoopback != 0:
			loSeen, loRefused = true, true
		case !errors.Is(err, unix.EINVAL):
			other = err
		}
	}
	switch {
	case other != nil:
		r.Status, r.Value, r.Detail = StatusWarn, "no", other.Error()
	case loSeen && !loRefused:
		r.Status, r.Value, r.Detail = StatusWarn, "no", "the kernel ignores TCP_MD5SIG_FLAG_IFINDEX (before Linux 5.6): a key for one interface would cover all"
	case len(vrfs) > 0:
		r.Status, r.Value, r.Detail = StatusOK, "yes", "TCP_MD5SIG_FLAG_IFINDEX (Linux 5.6+) on VRF devices: "+strings.Join(vrfs, ", ")
	case loSeen:
		r.Status, r.Value, r.Detail = StatusInfo, "needs a VRF", "the kernel takes TCP_MD5SIG_FLAG_IFINDEX (Linux 5.6+) for VRF (L3 master) devices only, and this host has none"
	default:
		r.Status, r.Value, r.Detail = StatusInfo, "unknown", "no loopback interface to test TCP_MD5SIG_FLAG_IFINDEX on"
	}
	return r
}

// mptcp reports whether a listener of a zero net.ListenConfig is MPTCP here,
// as Go 1.24+ makes it where the kernel allows.
func mptcp() Result {
	r := Result{Check: "MPTCP listeners"}
	sysctl := "net.mptcp.enabled=" + readSysctl("/proc/sys/net/mptcp/enabled")
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "unknown", err.Error()
		return r
	}
	defer ln.Close()
	proto := -1
	if rc, err := ln.(*net.TCPListener).SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil {
				proto = p
			}
		})
	}
	switch proto {
	case unix.IPPROTO_MPTCP:
		r.Status, r.Value = StatusInfo, "yes"
		r.Detail = fmt.Sprintf("Go listeners are MPTCP here (SO_PROTOCOL %d, %s); MPTCP takes no MD5 keys, so tcpmd5 makes keyed sockets plain TCP", proto, sysctl)
	case unix.IPPROTO_TCP:
		r.Status, r.Value = StatusInfo, "no"
		r.Detail = fmt.Sprintf("Go listeners are plain TCP here (%s)", sysctl)
	default:
		r.Status, r.Value, r.Detail = StatusWarn, "unknown", "could not read SO_PROTOCOL of a listener"
	}
	return r
}

func optmem() Result {
	r := Result{Check: "optmem_max", Status: StatusInfo, Detail: "net.core.optmem_max: the option memory each socket's keys are charged to"}
	v := readSysctl("/proc/sys/net/core/optmem_max")
	if v == "unknown" {
		r.Value = "unknown"
		r.Detail += "; not visible in this network namespace (kernels that keep it global show it only in the initial one): the measured keys per socket below is what counts"
		return r
	}
	r.Value = v + " bytes"
	if n, err := strconv.Atoi(v); err == nil {
		r.Number = &n
	}
	return r
}

// keysPerSocket counts the keys one throwaway socket takes before the
// kernel refuses another. The socket is IPv4, which every host has, and
// never connects; the keys are for the benchmarking range 198.18.0.0/15,
// which holds maxKeys addresses.
func keysPerSocket() Result {
	r := Result{Check: "keys per socket"}
	n := 0
	err := withSocket(unix.AF_INET, func(f *os.File) error {
		for n < maxKeys {
			a := netip.AddrFrom4([4]byte{198, 18 | byte(n>>16), byte(n >> 8), byte(n)})
			k := tcpmd5.Key{Peer: netip.PrefixFrom(a, 32), Secret: []byte("tcpmd5-check")}
			if err := tcpmd5.SetKeys(f, k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	switch {
	case errors.Is(err, unix.ENOMEM):
		r.Status, r.Value, r.Number = StatusInfo, strconv.Itoa(n), &n
		r.Detail = "measured on a throwaway socket; the next key failed with ENOMEM; raise net.core.optmem_max for more"
	case err == nil:
		r.Status, r.Value = StatusInfo, "over "+strconv.Itoa(n)
		r.Detail = "measured on a throwaway socket; stopped counting"
	default:
		r.Status, r.Value, r.Detail = StatusWarn, strconv.Itoa(n), "measured on a throwaway socket: "+err.Error()
	}
	return r
}

// steering makes a Listener with more host keys than one socket holds and
// reports how it spread them: the group of sockets and the classic BPF
// program that steers each SYN to the socket with its peer's key.
func steering() Result {
	r := Result{Check: "listener steering"}
	const n = 300
	keys := make([]tcpmd5.Key, n)
	for i := range keys {
		keys[i] = mustKey(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32).String())
	}
	ln, err := (&tcpmd5.ListenConfig{Keys: keys}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "no", "a listener with "+strconv.Itoa(n)+" keys: "+err.Error()
		return r
	}
	defer ln.Close()
	socks, err := netstat.Sockets()
	if err != nil {
		r.Status, r.Value, r.Detail = StatusWarn, "unknown", "counting the listener's sockets: "+err.Error()
		return r
	}
	sockets := netstat.Count(socks, ln.Addr().(*net.TCPAddr).Port, netstat.StateListen)
	r.Status, r.Value, r.Number = StatusOK, "classic BPF", &sockets
	r.Detail = fmt.Sprintf("a listener spread %d keys over %d sockets (SO_REUSEPORT, SO_ATTACH_REUSEPORT_CBPF by position in the group); it never grows its group while another socket is bound to its address, so no SYN of a keyed peer goes elsewhere", n, sockets)
	return r
}

func readSysctl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// aoAlgorithms are the MAC algorithms check tries: RFC 5926's two, then
// stronger ones the kernel's crypto API may have.
var aoAlgorithms = []string{"hmac(sha1)", "cmac(aes128)", "hmac(sha256)", "hmac(sha384)", "hmac(sha512)"}

// aoSupport reports whether the kernel has TCP-AO and which algorithms it
// takes, by adding a key with each on a throwaway socket.
func aoSupport() (Result, bool) {
	r := Result{Check: "TCP-AO"}
	if !tcpmd5.AOSupported() {
		r.Status, r.Value = StatusInfo, "no"
		r.Detail = "the kernel has no TCP-AO (RFC 5925; Linux 6.7+ with CONFIG_TCP_AO): AO keys fail with ErrAOUnsupported"
		return r, false
	}
	var taken []string
	for _, alg := range aoAlgorithms {
		err := withSocket(unix.AF_INET, func(f *os.File) error {
			return tcpmd5.AddAOKey(f, tcpmd5.AOKey{Peer: netip.MustParsePrefix("192.0.2.1/32"), SendID: 1, RecvID: 1, Algorithm: alg, Secret: []byte("tcpmd5-check")})
		})
		if err == nil {
			taken = append(taken, alg)
		}
	}
	if len(taken) == 0 {
		r.Status, r.Value, r.Detail = StatusFail, "no algorithm", "the kernel has TCP-AO but took none of "+strings.Join(aoAlgorithms, ", ")
		return r, false
	}
	r.Status, r.Value, r.Detail = StatusOK, "yes", "algorithms the kernel takes: "+strings.Join(taken, ", ")
	return r, true
}
