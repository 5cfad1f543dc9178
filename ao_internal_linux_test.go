//go:build linux && !tcpmd5stub

package tcpmd5

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

// TestAOLayouts pins our TCP-AO structs to the kernel's
// (include/uapi/linux/tcp.h, Linux 6.7+): sizes and the offset of every
// field after the address.
func TestAOLayouts(t *testing.T) {
	var add aoAddCmd
	var del aoDelCmd
	var info aoInfoOpt
	var get aoGetCmd
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct tcp_ao_add)", unsafe.Sizeof(add), 288},
		{"tcp_ao_add.alg_name", unsafe.Offsetof(add.AlgName), 128},
		{"tcp_ao_add.ifindex", unsafe.Offsetof(add.Ifindex), 192},
		{"tcp_ao_add.set_current", unsafe.Offsetof(add.Flags), 196},
		{"tcp_ao_add.reserved2", unsafe.Offsetof(add.Reserved2), 200},
		{"tcp_ao_add.prefix", unsafe.Offsetof(add.Prefix), 202},
		{"tcp_ao_add.sndid", unsafe.Offsetof(add.SndID), 203},
		{"tcp_ao_add.rcvid", unsafe.Offsetof(add.RcvID), 204},
		{"tcp_ao_add.maclen", unsafe.Offsetof(add.MACLen), 205},
		{"tcp_ao_add.keyflags", unsafe.Offsetof(add.KeyFlags), 206},
		{"tcp_ao_add.keylen", unsafe.Offsetof(add.KeyLen), 207},
		{"tcp_ao_add.key", unsafe.Offsetof(add.Key), 208},
		{"sizeof(struct tcp_ao_del)", unsafe.Sizeof(del), 144},
		{"tcp_ao_del.ifindex", unsafe.Offsetof(del.Ifindex), 128},
		{"tcp_ao_del.set_current", unsafe.Offsetof(del.Flags), 132},
		{"tcp_ao_del.reserved2", unsafe.Offsetof(del.Reserved2), 136},
		{"tcp_ao_del.prefix", unsafe.Offsetof(del.Prefix), 138},
		{"tcp_ao_del.sndid", unsafe.Offsetof(del.SndID), 139},
		{"tcp_ao_del.rcvid", unsafe.Offsetof(del.RcvID), 140},
		{"tcp_ao_del.current_key", unsafe.Offsetof(del.CurrentKey), 141},
		{"tcp_ao_del.rnext", unsafe.Offsetof(del.RNext), 142},
		{"tcp_ao_del.keyflags", unsafe.Offsetof(del.KeyFlags), 143},
		{"sizeof(struct tcp_ao_info_opt)", unsafe.Sizeof(info), 48},
		{"tcp_ao_info_opt.reserved2", unsafe.Offsetof(info.Reserved2), 4},
		{"tcp_ao_info_opt.current_key", unsafe.Offsetof(info.CurrentKey), 6},
		{"tcp_ao_info_opt.rnext", unsafe.Offsetof(info.RNext), 7},
		{"tcp_ao_info_opt.pkt_good", unsafe.Offsetof(info.PktGood), 8},
		{"tcp_ao_info_opt.pkt_bad", unsafe.Offsetof(info.PktBad), 16},
		{"tcp_ao_info_opt.pkt_key_not_found", unsafe.Offsetof(info.PktKeyNotFound), 24},
		{"tcp_ao_info_opt.pkt_ao_required", unsafe.Offsetof(info.PktAORequired), 32},
		{"tcp_ao_info_opt.pkt_dropped_icmp", unsafe.Offsetof(info.PktDroppedICMP), 40},
		{"sizeof(struct tcp_ao_getsockopt)", unsafe.Sizeof(get), 304},
		{"tcp_ao_getsockopt.alg_name", unsafe.Offsetof(get.AlgName), 128},
		{"tcp_ao_getsockopt.key", unsafe.Offsetof(get.Key), 192},
		{"tcp_ao_getsockopt.nkeys", unsafe.Offsetof(get.NKeys), 272},
		{"tcp_ao_getsockopt.is_current", unsafe.Offsetof(get.Flags), 276},
		{"tcp_ao_getsockopt.sndid", unsafe.Offsetof(get.SndID), 278},
		{"tcp_ao_getsockopt.rcvid", unsafe.Offsetof(get.RcvID), 279},
		{"tcp_ao_getsockopt.prefix", unsafe.Offsetof(get.Prefix), 280},
		{"tcp_ao_getsockopt.maclen", unsafe.Offsetof(get.MACLen), 281},
		{"tcp_ao_getsockopt.keyflags", unsafe.Offsetof(get.KeyFlags), 282},
		{"tcp_ao_getsockopt.keylen", unsafe.Offsetof(get.KeyLen), 283},
		{"tcp_ao_getsockopt.ifindex", unsafe.Offsetof(get.Ifindex), 284},
		{"tcp_ao_getsockopt.pkt_good", unsafe.Offsetof(get.PktGood), 288},
		{"tcp_ao_getsockopt.pkt_bad", unsafe.Offsetof(get.PktBad), 296},
		{"sizeof(struct __kernel_sockaddr_storage)", unsafe.Sizeof(add.Addr), 128},
	} {
		assert.Equal(t, c.want, c.got, c.name)
	}
	for _, size := range []uintptr{unsafe.Sizeof(add), unsafe.Sizeof(del), unsafe.Sizeof(info), unsafe.Sizeof(get)} {
		assert.Zero(t, size%8, "the kernel's structs are aligned(8): their sizes are multiples of 8")
	}
}
