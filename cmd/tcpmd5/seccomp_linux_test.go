//go:build amd64 || arm64

package main_test

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// seccompUnavailable is the helper's exit code when it cannot install its
// filter.
const seccompUnavailable = 3

// seccompHelper runs instead of the tests when TCPMD5_SECCOMP_EXEC names a
// program: it makes setsockopt(IPPROTO_TCP, TCP_MD5SIG or TCP_MD5SIG_EXT)
// fail with ENOPROTOOPT, or with TCPMD5_SECCOMP_BLOCK=ttl
// setsockopt(IPPROTO_IP, IP_MINTTL) and setsockopt(IPPROTO_IPV6,
// IPV6_MINHOPCOUNT), then execs the program's check command, which inherits
// the filter.
func seccompHelper(program string) {
	runtime.LockOSThread()
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		nr   = 0  // offsetof(struct seccomp_data, nr)
		arg1 = 24 // low word of args[1], the level, on little-endian
		arg2 = 32 // low word of args[2], the option name
	)
	filter := []unix.SockFilter{
		{Code: ld, K: nr},
		{Code: jeq, K: unix.SYS_SETSOCKOPT, Jt: 0, Jf: 5},
		{Code: ld, K: arg1},
		{Code: jeq, K: unix.IPPROTO_TCP, Jt: 0, Jf: 3},
		{Code: ld, K: arg2},
		{Code: jeq, K: unix.TCP_MD5SIG, Jt: 2, Jf: 0},
		{Code: jeq, K: unix.TCP_MD5SIG_EXT, Jt: 1, Jf: 0},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOPROTOOPT)},
	}
	if os.Getenv("TCPMD5_SECCOMP_BLOCK") == "ttl" {
		filter = []unix.SockFilter{
			{Code: ld, K: nr},
			{Code: jeq, K: unix.SYS_SETSOCKOPT, Jt: 0, Jf: 7},
			{Code: ld, K: arg1},
			{Code: jeq, K: unix.IPPROTO_IP, Jt: 0, Jf: 2},
			{Code: ld, K: arg2},
			{Code: jeq, K: unix.IP_MINTTL, Jt: 4, Jf: 3},
			{Code: jeq, K: unix.IPPROTO_IPV6, Jt: 0, Jf: 2},
			{Code: ld, K: arg2},
			{Code: jeq, K: unix.IPV6_MINHOPCOUNT, Jt: 1, Jf: 0},
			{Code: ret, K: unix.SECCOMP_RET_ALLOW},
			{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOPROTOOPT)},
		}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "prctl(PR_SET_NO_NEW_PRIVS):", err)
		os.Exit(seccompUnavailable)
	}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "prctl(PR_SET_SECCOMP):", err)
		os.Exit(seccompUnavailable)
	}
	err := syscall.Exec(program, []string{program, "check"}, os.Environ())
	fmt.Fprintln(os.Stderr, "exec:", err)
	os.Exit(seccompUnavailable)
}
