// Package e2e holds the end-to-end tests of tcpmd5: hosts in network
// namespaces joined by veth links, BIRD 2 as the real BGP peer, spoofed
// segments from a third host, links and peers that fail, captures of what
// goes on the wire, VRFs, and load. It has no code of its own; run its
// tests as root with `go test ./e2e`.
package e2e
