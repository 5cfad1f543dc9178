package e2e_test

import (
	"bytes"
	"crypto/aes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// This file recomputes TCP-AO MACs from RFC 5925 and RFC 5926 alone,
// independently of the kernel: the traffic key from the master key and the
// connection (KDF), then the MAC over the sequence number extension, the
// pseudo-header, the TCP header with its checksum and MAC zeroed (its
// options left out with ExcludeOptions, but for the TCP-AO option) and the
// payload.

// aoOption is a segment's TCP-AO option (kind 29): KeyID, RNextKeyID, MAC,
// and where the MAC starts in the TCP segment.
type aoOption struct {
	keyID, rnext uint8
	mac          []byte
	at           int
}

// findAO returns the TCP-AO option of a captured segment.
func findAO(s testnet.Segment) (aoOption, bool) {
	for _, o := range s.Options {
		if o.Kind == 29 && o.Len >= 4 {
			return aoOption{keyID: s.TCP[o.At+2], rnext: s.TCP[o.At+3], mac: s.TCP[o.At+4 : o.At+int(o.Len)], at: o.At + 4}, true
		}
	}
	return aoOption{}, false
}

// cmacAES is AES-CMAC (RFC 4493) of msg under key.
func cmacAES(key, msg []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	double := func(b []byte) []byte {
		out := make([]byte, 16)
		carry := byte(0)
		for i := 15; i >= 0; i-- {
			out[i] = b[i]<<1 | carry
			carry = b[i] >> 7
		}
		if b[0]&0x80 != 0 {
			out[15] ^= 0x87
		}
		return out
	}
	l := make([]byte, 16)
	block.Encrypt(l, l)
	k1 := double(l)
	k2 := double(k1)
	n := (len(msg) + 15) / 16
	last := make([]byte, 16)
	if n > 0 && len(msg)%16 == 0 {
		xor16(last, msg[(n-1)*16:], k1)
	} else {
		if n == 0 {
			n = 1
		}
		rest := msg[(n-1)*16:]
		padded := make([]byte, 16)
		copy(padded, rest)
		padded[len(rest)] = 0x80
		xor16(last, padded, k2)
	}
	x := make([]byte, 16)
	for i := 0; i < n-1; i++ {
		xor16(x, x, msg[i*16:(i+1)*16])
		block.Encrypt(x, x)
	}
	xor16(x, x, last)
	block.Encrypt(x, x)
	return x
}

// xor16 sets dst to a xor b (16 bytes).
func xor16(dst, a, b []byte) {
	for i := range 16 {
		dst[i] = a[i] ^ b[i]
	}
}

// prf is the pseudo-random function of an algorithm, keyed.
func prf(alg string, key, msg []byte) []byte {
	var h func() hash.Hash
	switch alg {
	case "hmac(sha1)":
		h = sha1.New
	case "hmac(sha256)":
		h = sha256.New
	case "cmac(aes128)":
		return cmacAES(key, msg)
	default:
		panic("no algorithm " + alg)
	}
	m := hmac.New(h, key)
	m.Write(msg)
	return m.Sum(nil)
}

// trafficKey is RFC 5926's KDF: PRF(master key, i=1 || "TCP-AO" || context
// || output length in bits), the context being the segment's addresses,
// ports and initial sequence numbers, the receiver's 0 on a SYN. AES-CMAC
// first turns a master key of other than 16 bytes into one (RFC 5926
// section 3.1.1.2).
func trafficKey(alg string, master []byte, src, dst netip.AddrPort, srcISN, dstISN uint32) []byte {
	bits := map[string]uint16{"hmac(sha1)": 160, "hmac(sha256)": 256, "cmac(aes128)": 128}[alg]
	if alg == "cmac(aes128)" && len(master) != 16 {
		master = cmacAES(make([]byte, 16), master)
	}
	in := []byte{1}
	in = append(in, "TCP-AO"...)
	in = append(in, src.Addr().AsSlice()...)
	in = append(in, dst.Addr().AsSlice()...)
	in = binary.BigEndian.AppendUint16(in, src.Port())
	in = binary.BigEndian.AppendUint16(in, dst.Port())
	in = binary.BigEndian.AppendUint32(in, srcISN)
	in = binary.BigEndian.AppendUint32(in, dstISN)
	in = binary.BigEndian.AppendUint16(in, bits)
	return prf(alg, master, in)
}

// segmentMAC is RFC 5925 section 5.1's MAC of a captured segment from src
// to dst, sequence number extension 0, truncated to the option's length.
func segmentMAC(alg string, tkey []byte, src, dst netip.AddrPort, tcp []byte, ao aoOption, excludeOptions bool) []byte {
	msg := make([]byte, 4) // SNE
	hdrLen := int(tcp[12]>>4) * 4
	if src.Addr().Is4() {
		msg = append(msg, src.Addr().AsSlice()...)
		msg = append(msg, dst.Addr().AsSlice()...)
		msg = append(msg, 0, 6)
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(tcp)))
	} else {
		msg = append(msg, src.Addr().AsSlice()...)
		msg = append(msg, dst.Addr().AsSlice()...)
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(tcp)))
		msg = append(msg, 0, 0, 0, 6)
	}
	hdr := bytes.Clone(tcp[:hdrLen])
	hdr[16], hdr[17] = 0, 0 // checksum
	clear(hdr[ao.at : ao.at+len(ao.mac)])
	if excludeOptions {
		hdr = append(hdr[:20:20], hdr[ao.at-4:ao.at+len(ao.mac)]...)
	}
	msg = append(msg, hdr...)
	msg = append(msg, tcp[hdrLen:]...)
	return prf(alg, tkey, msg)[:len(ao.mac)]
}

// isns returns the initial sequence numbers of a captured connection, the
// one its SYN from local carries and the peer's.
func isns(segs []testnet.Segment, local netip.AddrPort) (localISN, peerISN uint32) {
	for _, s := range segs {
		if s.Flags&testnet.SYN != 0 {
			if s.Src == local {
				localISN = s.Seq
			} else {
				peerISN = s.Seq
			}
		}
	}
	return localISN, peerISN
}

// TestAOOnTheWire captures whole TCP-AO connections between two namespaces
// and checks every segment, SYN to the last ACK: option kind 29 with the
// KeyID and RNextKeyID each side must send, and a MAC this test recomputes
// from the RFCs, for each algorithm, IPv4 and IPv6, with and without the
// options in the MAC, and across a key change on the live connection, after
// which the new KeyIDs are on the wire. A MAC computed with another secret
// does not match, which shows the check can fail.
func TestAOOnTheWire(t *testing.T) {
	testenv.Require(t, testenv.AO)
	t.Parallel()
	for _, tc := range []struct {
		name, family, alg string
		exclude, rekey    bool
	}{
		{"hmac(sha1)/IPv4", "IPv4", "hmac(sha1)", false, false},
		{"hmac(sha1)/IPv6", "IPv6", "hmac(sha1)", false, false},
		{"cmac(aes128)/IPv4", "IPv4", "cmac(aes128)", false, false},
		{"hmac(sha256)/IPv6", "IPv6", "hmac(sha256)", false, false},
		{"hmac(sha1)/IPv4/exclude options", "IPv4", "hmac(sha1)", true, false},
		{"hmac(sha1)/IPv4/key change", "IPv4", "hmac(sha1)", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.family == "IPv6" {
				testkit.RequireIPv6(t)
			}
			client, server := testnet.Pair(t)
			caddr, saddr := client.Addr4, server.Addr4
			if tc.family == "IPv6" {
				caddr, saddr = client.Addr6, server.Addr6
			}
			key := func(peer netip.Addr, send, recv uint8, secret string) tcpmd5.AOKey {
				return tcpmd5.AOKey{Peer: netip.PrefixFrom(peer, peer.BitLen()), SendID: send, RecvID: recv, Algorithm: tc.alg, Secret: []byte(secret), ExcludeOptions: tc.exclude}
			}
			// The server signs with KeyID 1 and the client with 2; after the
			// change, 11 and 12, with another secret.
			ln := listenIn(t, server.Host, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{key(caddr, 1, 2, testkit.SecretA)}}, "tcp", net.JoinHostPort(saddr.String(), "0"))
			accepted := testkit.ServeEcho(t, ln)
			capture := client.Capture(t)
			d := &tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{key(saddr, 2, 1, testkit.SecretA)}}
			d.Timeout = testkit.MustConnect
			c, err := dialIn(client.Host, d, "tcp", ln.Addr().String())
			require.NoError(t, err)
			sc := <-accepted
			testkit.Ping(t, c)
			if tc.rekey {
				cc := c.(*net.TCPConn)
				require.NoError(t, tcpmd5.AddAOKey(sc, key(caddr, 11, 12, testkit.SecretB)))
				require.NoError(t, tcpmd5.AddAOKey(cc, key(saddr, 12, 11, testkit.SecretB)))
				require.NoError(t, tcpmd5.SetAORNext(sc, 12))
				require.NoError(t, tcpmd5.SetAORNext(cc, 11))
				require.Eventually(t, func() bool {
					testkit.Ping(t, c)
					cs, err1 := tcpmd5.AOInfo(cc)
					ss, err2 := tcpmd5.AOInfo(sc)
					return err1 == nil && err2 == nil && cs.Current == 12 && ss.Current == 11
				}, testkit.MustConnect, 10*time.Millisecond)
				require.NoError(t, tcpmd5.RemoveAOKey(cc, key(saddr, 2, 1, "")))
				require.NoError(t, tcpmd5.RemoveAOKey(sc, key(caddr, 1, 2, "")))
			}
			testkit.Ping(t, c)
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			require.NoError(t, c.Close())
			segs := wholeConnection(t, capture, local, remote)
			clientISN, serverISN := isns(segs, local)
			secrets := map[uint8]string{1: testkit.SecretA, 2: testkit.SecretA, 11: testkit.SecretB, 12: testkit.SecretB}
			newIDs := 0
			for _, s := range segs {
				ao, ok := findAO(s)
				if !assert.True(t, ok, "a segment without TCP-AO: %v", s) {
					continue
				}
				src, dst, srcISN, dstISN := local, remote, clientISN, serverISN
				sendID, rnext := uint8(2), uint8(1)
				if s.Src == remote {
					src, dst, srcISN, dstISN = remote, local, serverISN, clientISN
					sendID, rnext = 1, 2
				}
				if ao.keyID >= 11 {
					sendID, rnext = sendID+10, rnext+10
					newIDs++
				}
				assert.Equal(t, sendID, ao.keyID, "KeyID of %v", s)
				if !tc.rekey {
					assert.Equal(t, rnext, ao.rnext, "RNextKeyID of %v", s)
				}
				assert.Len(t, ao.mac, 12, "the default MAC length, 96 bits")
				if s.Flags&testnet.SYN != 0 && s.Flags&testnet.ACK == 0 {
					dstISN = 0 // RFC 5925 section 5.2: a SYN knows no other ISN
				}
				tkey := trafficKey(tc.alg, []byte(secrets[ao.keyID]), src, dst, srcISN, dstISN)
				assert.Equal(t, segmentMAC(tc.alg, tkey, src, dst, s.TCP, ao, tc.exclude), ao.mac, "the MAC of %v", s)
				wrong := trafficKey(tc.alg, []byte(testkit.SecretB+"x"), src, dst, srcISN, dstISN)
				assert.NotEqual(t, segmentMAC(tc.alg, wrong, src, dst, s.TCP, ao, tc.exclude), ao.mac, "another secret's MAC matched")
			}
			if tc.rekey {
				assert.Positive(t, newIDs, "no segment with the new KeyIDs after the change")
				last := map[netip.AddrPort]aoOption{}
				for _, s := range segs {
					last[s.Src], _ = findAO(s)
				}
				assert.Equal(t, [2]uint8{12, 11}, [2]uint8{last[local].keyID, last[local].rnext}, "the client's last segment")
				assert.Equal(t, [2]uint8{11, 12}, [2]uint8{last[remote].keyID, last[remote].rnext}, "the server's last segment")
			}
			t.Logf("%d segments, every MAC recomputed; %d with the new KeyIDs", len(segs), newIDs)
		})
	}
}

// TestCMACVectors: the AES-CMAC above gives RFC 4493's examples.
func TestCMACVectors(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		require.NoError(t, err)
		return b
	}
	key := unhex("2b7e151628aed2a6abf7158809cf4f3c")
	msg := unhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411")
	for n, want := range map[int]string{0: "bb1d6929e95937287fa37d129b756746", 16: "070a16b46b4d4144f79bdd9dd04a287c", 40: "dfa66747de9ae63030ca32611497c827"} {
		assert.Equal(t, want, hex.EncodeToString(cmacAES(key, msg[:n])), "%d bytes", n)
	}
}

// TestAOChainRollOnTheWire captures a TCP-AO connection whose two ends
// each run a KeyChain, across a scheduled roll, with echo traffic
// throughout: a new key (KeyIDs 11 and 12, another secret) accepted at
// once and sent from T, the old one (1 and 2) sent and accepted until a
// second after T. Every MAC of the connection, SYN to the last ACK,
// verifies as this file recomputes it; the old KeyIDs sign until T; from
// the first segment sent after both ends report the new key current, and
// again after the old key's end, every segment carries the new KeyID and
// asks for the new one; the old key is then gone from both ends.
func TestAOChainRollOnTheWire(t *testing.T) {
	testenv.Require(t, testenv.AO)
	t.Parallel()
	client, server := testnet.Pair(t)
	caddr, saddr := client.Addr4, server.Addr4
	key := func(peer netip.Addr, send, recv uint8, secret string) tcpmd5.AOKey {
		return tcpmd5.AOKey{Peer: netip.PrefixFrom(peer, peer.BitLen()), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", Secret: []byte(secret)}
	}
	type end struct {
		chain      *tcpmd5.KeyChain
		peer       netip.Addr
		send, recv uint8 // the old KeyIDs; the new ones are 10 more
		conn       *net.TCPConn
	}
	srv := &end{chain: tcpmd5.NewKeyChain(), peer: caddr, send: 1, recv: 2}
	cli := &end{chain: tcpmd5.NewKeyChain(), peer: saddr, send: 2, recv: 1}
	for _, e := range []*end{srv, cli} {
		require.NoError(t, e.chain.SetAOKey(key(e.peer, e.send, e.recv, testkit.SecretA), tcpmd5.Lifetime{}, tcpmd5.Lifetime{}))
	}
	ln := listenIn(t, server.Host, &tcpmd5.ListenConfig{KeyChain: srv.chain}, "tcp", net.JoinHostPort(saddr.String(), "0"))
	accepted := testkit.ServeEcho(t, ln)
	capture := client.Capture(t)
	d := &tcpmd5.Dialer{KeyChain: cli.chain}
	d.Timeout = testkit.MustConnect
	c, err := dialIn(client.Host, d, "tcp", ln.Addr().String())
	require.NoError(t, err)
	srv.conn, cli.conn = <-accepted, c.(*net.TCPConn)
	echo := func(word string) {
		t.Helper()
		require.NoError(t, c.SetDeadline(time.Now().Add(testkit.MustConnect)))
		_, err := c.Write([]byte(word))
		require.NoError(t, err)
		buf := make([]byte, len(word))
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		require.Equal(t, word, string(buf))
	}
	echo("Old!")

	// The schedule, set once the connection is up: the new key sent from
	// T, the old one until a second after it.
	at := time.Now().Add(time.Second)
	for _, e := range []*end{srv, cli} {
		require.NoError(t, e.chain.SetAOKey(key(e.peer, e.send+10, e.recv+10, testkit.SecretB), tcpmd5.Lifetime{From: at}, tcpmd5.Lifetime{}))
		ends := tcpmd5.Lifetime{Until: at.Add(time.Second)}
		require.NoError(t, e.chain.SetAOKey(key(e.peer, e.send, e.recv, testkit.SecretA), ends, ends))
	}
	switched := func(e *end, oldGone bool) bool {
		for _, s := range e.chain.Sessions() {
			if s.Remote == e.conn.RemoteAddr().(*net.TCPAddr).AddrPort() {
				return s.Err == nil && !s.Lagging && s.Current == e.send+10 && s.RNext == e.recv+10 && (!oldGone || len(s.AOKeys) == 1)
			}
		}
		return false
	}
	require.Eventually(t, func() bool {
		echo("Ping")
		return switched(srv, false) && switched(cli, false)
	}, testkit.MustConnect, 20*time.Millisecond, "both ends current on the new key after T")
	echo("Post")
	require.Eventually(t, func() bool {
		echo("Ping")
		return switched(srv, true) && switched(cli, true)
	}, testkit.MustConnect, 20*time.Millisecond, "the old key gone from both ends after its end")
	echo("Late")
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	require.NoError(t, c.Close())
	segs := wholeConnection(t, capture, local, remote)
	clientISN, serverISN := isns(segs, local)
	secrets := map[uint8]string{1: testkit.SecretA, 2: testkit.SecretA, 11: testkit.SecretB, 12: testkit.SecretB}
	phase := "" // the last marker seen on the wire
	old, late := 0, 0
	for _, s := range segs {
		ao, ok := findAO(s)
		if !assert.True(t, ok, "a segment without TCP-AO: %v", s) {
			continue
		}
		switch string(s.Payload) {
		case "Post", "Late":
			phase = string(s.Payload)
		}
		src, dst, srcISN, dstISN, e := local, remote, clientISN, serverISN, cli
		if s.Src == remote {
			src, dst, srcISN, dstISN, e = remote, local, serverISN, clientISN, srv
		}
		if s.Flags&testnet.SYN != 0 && s.Flags&testnet.ACK == 0 {
			dstISN = 0
		}
		if ao.keyID == e.send {
			old++
		}
		if phase != "" {
			assert.Equal(t, [2]uint8{e.send + 10, e.recv + 10}, [2]uint8{ao.keyID, ao.rnext}, "KeyID and RNextKeyID of %v, after %q", s, phase)
			late++
		}
		secret, known := secrets[ao.keyID]
		if !assert.True(t, known, "KeyID %d of %v", ao.keyID, s) {
			continue
		}
		tkey := trafficKey("hmac(sha1)", []byte(secret), src, dst, srcISN, dstISN)
		assert.Equal(t, segmentMAC("hmac(sha1)", tkey, src, dst, s.TCP, ao, false), ao.mac, "the MAC of %v", s)
	}
	assert.Positive(t, old, "no segment signed with the old key before T")
	assert.Equal(t, "Late", phase, "the markers were not on the wire")
	t.Logf("%d segments, every MAC recomputed; %d with the old KeyIDs, %d checked after both ends switched", len(segs), old, late)
}
