// Package testnet builds test networks out of Linux network namespaces:
// hosts joined by veth pairs, with TEST-NET addresses (192.0.2.0/24,
// 2001:db8::/32) that the test chooses through the order of its links, and
// optionally a router namespace between them. Every namespace is named
// "md5t-" plus a name unique on the machine, and is deleted, with every
// process started in it, when the test ends, failed or not.
//
// Code runs inside a host with [Host.Do]: sockets made there stay in the
// host's namespace wherever they are used afterwards.
//
// The package is Linux-only; elsewhere it is empty.
package testnet
