// Command tcpmd5 tests TCP MD5 signatures (RFC 2385) the way BGP peers use
// them, where telnet and netcat cannot: a peer drops unsigned SYNs in
// silence, and a wrong key looks exactly like a dead host.
//
//	tcpmd5 check                                  # can this host sign segments? TTL security?
//	tcpmd5 probe -key-file peers.keys 192.0.2.1:179 # does the peer accept our key?
//	tcpmd5 listen -key-file peers.keys :1790      # netcat over signed TCP
//	tcpmd5 dial -key-file peers.keys 192.0.2.1:1790
//	tcpmd5 probe -ttl-security 1 -key-file peers.keys 192.0.2.1:179 # GTSM, RFC 5082
//
// -ttl-security N on probe, listen and dial adds TTL security (GTSM, RFC
// 5082): send with TTL 255 and drop segments from more than N hops away.
//
// Run "tcpmd5 help" for key files, exit codes and every flag.
package main

import (
	"os"

	"github.com/tcplowlevel/tcpmd5/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
