// Package tcpmd5 gives existing Go network code RFC 2385 TCP MD5 signatures,
// the option BGP routers and route servers use against spoofed segments and
// resets, and their successor RFC 5925 TCP-AO, without a new connection
// type.
//
// [ListenConfig], [Listen] and [Dialer] are drop-ins for [net.ListenConfig],
// [net.Listen] and [net.Dialer]. They install keys on the socket through
// setsockopt(2) TCP_MD5SIG and TCP_MD5SIG_EXT before bind, listen and
// connect, so every segment from the SYN on is signed and verified by the
// kernel. What they return are ordinary values: [Listener] implements
// [net.Listener], and its Accept, like [Dialer.Dial], returns a
// *[net.TCPConn], so [net/http], bufio, gRPC and [io.Copy] (with splice and
// sendfile) work unchanged, at the kernel's speed.
//
// Keys change on a live listener with [Listener.SetKey] and
// [Listener.RemoveKey]. A Listener holds any number of keys: past 128 on one
// socket it spreads them over a SO_REUSEPORT group of sockets steered by
// source address, so route servers need no net.core.optmem_max change; it
// never grows that group over a socket of another program bound to the
// same address.
// [Control] and [AOControl] compose MD5 and TCP-AO keys into a Control
// hook of your own. [ListenConfig.FileListener] makes a listening socket
// made elsewhere (systemd socket activation, a passed descriptor) a
// Listener with its keys and the same Accept policy; [SetKeys] only puts
// MD5 keys on a socket made elsewhere.
//
// TTLSecurity on [ListenConfig] and [Dialer] adds RFC 5082 TTL security
// (GTSM) beside the keys: segments from peers farther than the given number
// of hops are dropped before TCP sees them.
//
// # Refusing unsigned peers
//
// The kernel verifies signatures only for peers a key covers; any other peer
// may connect unsigned. A [Listener] therefore hands over only connections
// whose handshake the kernel verified with a key (it asks the kernel, so a
// handshake that completed unsigned just before [Listener.SetKey] covered
// its peer is refused too), and closes the others at Accept, unless
// [ListenConfig.AllowUnsigned] is set and no key covers the peer;
// [ListenConfig.OnRefuse] is told of each such connection, by peer and
// [RefusalReason]. A [Dialer]
// with keys refuses to dial a destination that none of them covers
// ([ErrNoKey]) unless [Dialer.AllowUnsigned] is set, and its DialUDP,
// DialIP and DialUnix, which no key can protect, fail.
//
// A peer with a different key, or none, drops signed segments in silence, so
// a mismatch shows up as a dial timeout. Such errors say so in their text and
// still report Timeout() as a [net.Error].
//
// # TCP-AO
//
// [ListenConfig.AOKeys] and [Dialer.AOKeys] install TCP-AO keys ([AOKey],
// RFC 5925; Linux 6.7+ with CONFIG_TCP_AO) through setsockopt(2)
// TCP_AO_ADD_KEY, as Keys are installed: before listen and connect, all or
// none. One listener serves MD5 peers and AO peers side by side, which is
// how operators migrate; a peer is one or the other, and keys of both kinds
// for overlapping peers are refused. [Listener.SetAOKey] and
// [Listener.RemoveAOKey] change AO keys on a live listener. On one
// connection, [AddAOKey], [SetAORNext], [SetAOCurrent], [RemoveAOKey] and
// [AOInfo] change its keys without a reset: both ends add the new key, each
// asks for it with SetAORNext, each kernel follows the other's request, and
// then each removes the old key. [AOSupported] reports whether the kernel
// has TCP-AO; where it has not, AO calls fail with [ErrAOUnsupported].
//
// # Key chains
//
// A [KeyChain] holds MD5 and TCP-AO keys with lifetimes (RFC 8177) and
// keeps every listener and dialer it is attached to
// ([ListenConfig.KeyChain], [Dialer.KeyChain]), and every live connection
// they returned, in step with it: TCP-AO keys take over without a reset,
// MD5 secrets are replaced in place and survive within TCP's
// retransmissions.
//
// # Who fails our signatures
//
// Package [github.com/tcplowlevel/tcpmd5/drops] reads the segments the
// kernel drops for a missing or wrong signature, as the kernel reports
// them through its tcp:tcp_hash_* and tcp:tcp_ao_* tracepoints (Linux
// 6.11+, CAP_PERFMON or root): the peer, our address, the reason, the
// flags. Package [github.com/tcplowlevel/tcpmd5/metrics] counts them, and
// the connections a Listener refused ([ListenConfig.OnRefuse]), by peer,
// for Prometheus.
//
// # Platforms
//
// Signing happens on Linux only. Everywhere else the same API compiles;
// [Supported] reports false and whatever needs a key returns an error that
// matches [ErrMD5Unsupported] with [errors.Is]. Kernels without
// CONFIG_TCP_MD5SIG and sandboxes such as gVisor report the same.
//
// # Example
//
//	key, err := tcpmd5.ParseKey("192.0.2.1", "not-a-real-secret")
//	if err != nil {
//		return err
//	}
//	ln, err := tcpmd5.Listen("tcp", ":179", key)
//	if err != nil {
//		return err
//	}
//	defer ln.Close()
//	for {
//		conn, err := ln.Accept() // a *net.TCPConn, signed by the kernel
//		if err != nil {
//			return err
//		}
//		go serve(conn)
//	}
package tcpmd5
