//go:build linux && !tcpmd5stub

package drops

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/tracepoint"
)

// testWatcher decodes records laid out as the formats in testdata, read off
// a 6.18 kernel: an MD5 event and an AO one with KeyIDs.
func testWatcher(t testing.TB) (*watcher, tracepoint.Format, tracepoint.Format) {
	t.Helper()
	load := func(name string) tracepoint.Format {
		f, err := os.Open("testdata/" + name + ".format")
		require.NoError(t, err)
		defer f.Close()
		fm, err := tracepoint.ParseFormat(f)
		require.NoError(t, err)
		return fm
	}
	md5, ao := load("tcp_hash_md5_mismatch"), load("tcp_ao_handshake_failure")
	return &watcher{events: map[uint64]dropEvent{md5.ID: {md5, MD5Mismatch}, ao.ID: {ao, AOMismatch}}}, md5, ao
}

// record lays out d as the kernel would for format f.
func record(f tracepoint.Format, d Drop, state int, syn, ack bool) []byte {
	rec := make([]byte, 128)
	binary.NativeEndian.PutUint16(rec, uint16(f.ID))
	put := func(name string, b []byte) { copy(f.Bytes(rec, name), b) }
	sockaddr := func(a netip.AddrPort) []byte {
		b := make([]byte, 28)
		binary.BigEndian.PutUint16(b[2:], a.Port())
		if a.Addr().Is4() {
			binary.NativeEndian.PutUint16(b, unix.AF_INET)
			copy(b[4:], a.Addr().AsSlice())
		} else {
			binary.NativeEndian.PutUint16(b, unix.AF_INET6)
			copy(b[8:], a.Addr().AsSlice())
		}
		return b
	}
	put("saddr", sockaddr(d.Remote))
	put("daddr", sockaddr(d.Local))
	put("state", binary.NativeEndian.AppendUint32(nil, uint32(state)))
	put("l3index", binary.NativeEndian.AppendUint32(nil, uint32(d.L3Index)))
	if syn {
		put("syn", []byte{1})
	}
	if ack {
		put("ack", []byte{1})
	}
	put("keyid", []byte{d.KeyID})
	put("rnext", []byte{d.RNextKeyID})
	put("maclen", []byte{d.MACLen})
	return rec
}

func TestDecodeDrop(t *testing.T) {
	w, md5, ao := testWatcher(t)
	want := Drop{Reason: MD5Mismatch, Remote: netip.MustParseAddrPort("127.0.0.2:40000"), Local: netip.MustParseAddrPort("127.0.0.1:179"), Flags: "S", State: "LISTEN"}
	got, ok := w.decode(record(md5, want, 10, true, false))
	require.True(t, ok)
	assert.Equal(t, want, got)

	want = Drop{Reason: AOMismatch, Remote: netip.MustParseAddrPort("[fe80::2]:40000"), Local: netip.MustParseAddrPort("[fe80::1]:179"), Flags: "S.", State: "ESTABLISHED", L3Index: 7, KeyID: 100, RNextKeyID: 101, MACLen: 12}
	got, ok = w.decode(record(ao, want, 1, true, true))
	require.True(t, ok)
	assert.Equal(t, want, got)

	want.MACLen, want.KeyID, want.RNextKeyID = 0, 0, 0
	got, ok = w.decode(record(ao, want, 1, true, true))
	require.True(t, ok)
	assert.Equal(t, AOMissing, got.Reason, "a handshake failure without an AO option: AO was required")

	for _, bad := range [][]byte{nil, {1}, {0xff, 0xff, 0, 0}, record(md5, want, 1, true, false)[:40]} {
		_, ok := w.decode(bad)
		assert.False(t, ok, "%x", bad)
	}
}

// FuzzDecodeDrop: no record, however malformed, makes decode panic, and
// what it decodes has addresses of one family and a known reason.
func FuzzDecodeDrop(f *testing.F) {
	w, md5, ao := testWatcher(f)
	f.Add(record(md5, Drop{Remote: netip.MustParseAddrPort("127.0.0.2:1"), Local: netip.MustParseAddrPort("127.0.0.1:2")}, 10, true, false))
	f.Add(record(ao, Drop{Remote: netip.MustParseAddrPort("[::2]:1"), Local: netip.MustParseAddrPort("[::1]:2"), KeyID: 1}, 1, false, true))
	f.Fuzz(func(t *testing.T, rec []byte) {
		d, ok := w.decode(rec)
		if !ok {
			return
		}
		if !d.Remote.IsValid() || !d.Local.IsValid() {
			t.Fatalf("decoded invalid addresses: %+v", d)
		}
		assert.Contains(t, Reasons, d.Reason)
	})
}
