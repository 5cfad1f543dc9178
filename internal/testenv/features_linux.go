package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/tracepoint"
)

// tcpAOAddKey is TCP_AO_ADD_KEY of linux/tcp.h, which x/sys does not name.
const tcpAOAddKey = 38

// probeKernel asks the kernel for f the way a program would use it: a
// socket option set, a socket made, a device added. Only the kernel's own
// "no such thing" answers count as absent.
func probeKernel(f Feature) probeResult {
	switch f {
	case MD5:
		return probeSockopt(func(fd int) error {
			sig := unix.TCPMD5Sig{Keylen: 1}
			sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sig.Addr))
			sa.Family = unix.AF_INET
			sa.Addr = [4]byte{127, 0, 0, 1}
			return unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig)
		}, "setsockopt TCP_MD5SIG", nil)
	case AO:
		// An all-zero struct tcp_ao_add: a kernel with TCP-AO parses it and
		// refuses the family (EINVAL); one without does not know the option.
		return probeSockopt(func(fd int) error {
			var add [288]byte
			_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, tcpAOAddKey, uintptr(unsafe.Pointer(&add[0])), uintptr(len(add)), 0)
			if errno != 0 {
				return errno
			}
			return nil
		}, "setsockopt TCP_AO_ADD_KEY", unix.EINVAL)
	case MPTCP:
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
		if err != nil {
			return absentOrError("socket IPPROTO_MPTCP", err, unix.EPROTONOSUPPORT, unix.ENOPROTOOPT, unix.EINVAL, unix.EAFNOSUPPORT)
		}
		unix.Close(fd)
		return probeResult{present: true}
	case IPv6:
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return absentOrError("socket AF_INET6", err, unix.EAFNOSUPPORT)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
			return absentOrError("bind [::1]:0", err, unix.EADDRNOTAVAIL)
		}
		return probeResult{present: true}
	case VRF:
		return probeVRF()
	case Tracepoints:
		f, err := tracepoint.Load("tcp", "tcp_hash_md5_mismatch")
		if errors.Is(err, tracepoint.ErrNoTracepoint) {
			return probeResult{absent: err.Error()}
		}
		if err != nil {
			return probeResult{err: err}
		}
		r, err := tracepoint.Open("", 1, f)
		switch {
		case errors.Is(err, tracepoint.ErrNoTracepoint):
			return probeResult{absent: err.Error()}
		case err != nil:
			return probeResult{err: err}
		}
		r.Close()
		return probeResult{present: true}
	}
	return probeResult{err: fmt.Errorf("no probe for %q", f)}
}

// probeSockopt runs set on a fresh TCP socket; an error of ENOPROTOOPT or
// EOPNOTSUPP means the kernel lacks the option, and ok (or no error) means
// it has it.
func probeSockopt(set func(fd int) error, what string, ok error) probeResult {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return probeResult{err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(fd)
	err = set(fd)
	if err == nil || (ok != nil && errors.Is(err, ok)) {
		return probeResult{present: true}
	}
	return absentOrError(what, err, unix.ENOPROTOOPT, unix.EOPNOTSUPP)
}

// absentOrError reads err as the kernel's "absent" if it is one of absent,
// else as a probe that could not run.
func absentOrError(what string, err error, absent ...unix.Errno) probeResult {
	for _, a := range absent {
		if errors.Is(err, a) {
			return probeResult{absent: what + ": " + err.Error()}
		}
	}
	return probeResult{err: fmt.Errorf("%s: %w", what, err)}
}

// probeVRF adds a VRF device in a network namespace of its own, which goes
// away with the probing thread.
func probeVRF() probeResult {
	ip, err := exec.LookPath("ip")
	if err != nil {
		return probeResult{err: errors.New("ip(8) is not installed (apt-get install iproute2)")}
	}
	res := make(chan probeResult)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- probeResult{err: fmt.Errorf("unshare CLONE_NEWNET: %w", err)}
			return
		}
		out, err := exec.Command(ip, "link", "add", "md5t-vrfprobe", "type", "vrf", "table", "4242").CombinedOutput()
		msg := strings.TrimSpace(string(out))
		switch {
		case err == nil:
			res <- probeResult{present: true}
		case strings.Contains(msg, "Unknown device type"), strings.Contains(msg, "not supported"):
			res <- probeResult{absent: "ip link add type vrf: " + msg}
		default:
			res <- probeResult{err: fmt.Errorf("ip link add type vrf: %v: %s", err, msg)}
		}
	}()
	return <-res
}
