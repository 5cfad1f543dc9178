package netstat

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// TCP states as /proc/net/tcp writes them (include/net/tcp_states.h).
const (
	StateEstablished = 0x01
	StateTimeWait    = 0x06
	StateListen      = 0x0A
)

// Socket is one TCP socket of /proc/net/tcp or /proc/net/tcp6. The address
// of an IPv6 socket stays 16 bytes, IPv4-mapped ones included, so that it
// never equals an IPv4 socket's.
type Socket struct {
	Local, Remote netip.AddrPort
	State         int
}

// Sockets returns the TCP sockets of the calling thread's network
// namespace (/proc/thread-self/net/tcp and tcp6). A kernel without IPv6 has
// no tcp6 file; that is not an error.
func Sockets() ([]Socket, error) {
	var out []Socket
	for _, name := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(name, "6") {
			continue
		}
		if err != nil {
			return nil, err
		}
		socks, err := ParseSockets(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, socks...)
	}
	return out, nil
}

// ParseSockets reads sockets in the format of /proc/net/tcp or tcp6: a
// header line, then one socket a line, "sl local remote st ...", addresses
// as hexadecimal 32-bit words in host order and the port in hexadecimal.
func ParseSockets(r io.Reader) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if n == 1 && len(fields) > 0 && fields[0] == "sl" {
			continue
		}
		if len(fields) < 4 {
			return nil, fmt.Errorf("line %d: want at least 4 fields, found %d", n, len(fields))
		}
		local, err := parseAddrPort(fields[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", n, err)
		}
		remote, err := parseAddrPort(fields[2])
		if err != nil {
			return nil, fmt.Errorf("line %d: remote address: %w", n, err)
		}
		state, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state: %w", n, err)
		}
		out = append(out, Socket{Local: local, Remote: remote, State: int(state)})
	}
	return out, sc.Err()
}

// parseAddrPort reads "0100007F:1F90" (127.0.0.1:8080) or its 32-digit IPv6
// form.
func parseAddrPort(s string) (netip.AddrPort, error) {
	addr, port, ok := strings.Cut(s, ":")
	if !ok || (len(addr) != 8 && len(addr) != 32) {
		return netip.AddrPort{}, fmt.Errorf("%q is not ADDR:PORT in hexadecimal", s)
	}
	raw, err := hex.DecodeString(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, err)
	}
	for i := 0; i < len(raw); i += 4 { // each word in host order
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: port: %w", s, err)
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// Count returns how many sockets in socks are in state, with port as their
// local port.
func Count(socks []Socket, port, state int) int {
	n := 0
	for _, s := range socks {
		if int(s.Local.Port()) == port && s.State == state {
			n++
		}
	}
	return n
}
