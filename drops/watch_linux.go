//go:build linux && !tcpmd5stub

package drops

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/tracepoint"
)

// dropEvents are the tracepoints that report drops, and their reasons.
var dropEvents = []struct {
	name   string
	reason Reason
}{
	{"tcp_hash_md5_mismatch", MD5Mismatch},
	{"tcp_hash_md5_required", MD5Missing},
	{"tcp_hash_md5_unexpected", MD5Unexpected},
	{"tcp_hash_bad_header", BadHeader},
	{"tcp_hash_ao_required", AOMissing},
	{"tcp_ao_mismatch", AOMismatch},
	{"tcp_ao_wrong_maclen", AOMismatch},
	{"tcp_ao_handshake_failure", AOMismatch}, // AOMissing when the segment has no AO option
	{"tcp_ao_key_not_found", AOKeyNotFound},
}

// dropRingPages is each CPU's ring buffer: 64 pages hold about 1,500 drops.
const dropRingPages = 64

type watcher struct {
	r       *tracepoint.Reader
	events  map[uint64]dropEvent // by tracepoint ID
	missing []Reason
}

type dropEvent struct {
	f      tracepoint.Format
	reason Reason
}

func watch(filter Filter) (*watcher, error) {
	cookie, err := netnsCookie()
	if err != nil {
		return nil, err
	}
	w := &watcher{events: make(map[uint64]dropEvent)}
	var formats []tracepoint.Format
	have := make(map[Reason]bool)
	for _, ev := range dropEvents {
		f, err := tracepoint.Load("tcp", ev.name)
		switch {
		case errors.Is(err, tracepoint.ErrNoTracepoint):
			continue
		case err != nil:
			return nil, fmt.Errorf("drops: watching: %w", err)
		}
		formats = append(formats, f)
		w.events[f.ID] = dropEvent{f, ev.reason}
		have[ev.reason] = true
	}
	for _, r := range Reasons {
		if !have[r] {
			w.missing = append(w.missing, r)
		}
	}
	if len(formats) == 0 {
		return nil, fmt.Errorf("%w: no tcp:tcp_hash_* tracepoint in %s", ErrUnsupported, tracepoint.Dir)
	}
	expr := "net_cookie == " + strconv.FormatUint(cookie, 10)
	if filter.Port != 0 {
		expr += " && dport == " + strconv.Itoa(int(filter.Port))
	}
	w.r, err = tracepoint.Open(expr, dropRingPages, formats...)
	switch {
	case errors.Is(err, tracepoint.ErrNoTracepoint):
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	case err != nil:
		return nil, fmt.Errorf("drops: watching: %w", err)
	}
	return w, nil
}

// netnsCookie returns the cookie of the caller's network namespace, which
// the kernel puts in every drop event (SO_NETNS_COOKIE, Linux 5.14+).
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("drops: watching: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupported, os.NewSyscallError("getsockopt SO_NETNS_COOKIE", err))
	}
	return c, nil
}

func (w *watcher) read(ctx context.Context) ([]Drop, error) {
	for {
		recs, err := w.r.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("drops: reading: %w", err)
		}
		now := time.Now()
		drops := make([]Drop, 0, len(recs))
		for _, rec := range recs {
			if d, ok := w.decode(rec); ok {
				d.Time = now
				drops = append(drops, d)
			}
		}
		if len(drops) > 0 {
			return drops, nil
		}
	}
}

func (w *watcher) lost() uint64 { return w.r.Lost() }

func (w *watcher) close() error { return w.r.Close() }

// decode lays out one record by its tracepoint's format.
func (w *watcher) decode(rec []byte) (Drop, bool) {
	if len(rec) < 2 {
		return Drop{}, false
	}
	ev, ok := w.events[uint64(binary.NativeEndian.Uint16(rec))] // common_type, at offset 0
	if !ok {
		return Drop{}, false
	}
	f := ev.f
	u8 := func(name string) uint8 {
		if b := f.Bytes(rec, name); len(b) == 1 {
			return b[0]
		}
		return 0
	}
	i32 := func(name string) int {
		if b := f.Bytes(rec, name); len(b) == 4 {
			return int(int32(binary.NativeEndian.Uint32(b)))
		}
		return 0
	}
	remote, rok := sockaddrBytes(f.Bytes(rec, "saddr"))
	local, lok := sockaddrBytes(f.Bytes(rec, "daddr"))
	if !rok || !lok {
		return Drop{}, false
	}
	d := Drop{
		Reason:     ev.reason,
		Remote:     remote,
		Local:      local,
		State:      tcpState(i32("state")),
		L3Index:    i32("l3index"),
		KeyID:      u8("keyid"),
		RNextKeyID: u8("rnext"),
		MACLen:     u8("maclen"),
	}
	var flags strings.Builder
	for _, fl := range []struct{ field, letter string }{{"fin", "F"}, {"syn", "S"}, {"rst", "R"}, {"psh", "P"}, {"ack", "."}} {
		if u8(fl.field) != 0 {
			flags.WriteString(fl.letter)
		}
	}
	d.Flags = flags.String()
	if f.Name == "tcp_ao_handshake_failure" && d.MACLen == 0 {
		d.Reason = AOMissing
	}
	return d, true
}

// sockaddrBytes decodes the sockaddr_in or sockaddr_in6 a drop event
// stores its addresses in.
func sockaddrBytes(b []byte) (netip.AddrPort, bool) {
	if len(b) < 2 {
		return netip.AddrPort{}, false
	}
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		if len(b) >= 8 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), true
		}
	case unix.AF_INET6:
		if len(b) >= 24 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:4])), true
		}
	}
	return netip.AddrPort{}, false
}

// tcpState names the kernel's TCP states (include/net/tcp_states.h).
func tcpState(s int) string {
	names := [...]string{1: "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"}
	if s > 0 && s < len(names) {
		return names[s]
	}
	return "state " + strconv.Itoa(s)
}
