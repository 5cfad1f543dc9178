// Package rawao sets TCP-AO keys (RFC 5925) the way a program without
// tcpmd5 would: setsockopt(2) TCP_AO_ADD_KEY and TCP_AO_DEL_KEY with the
// kernel's structs laid out by hand, byte by byte, from
// include/uapi/linux/tcp.h. It shares no code with tcpmd5's own encoding,
// so that tests can hold tcpmd5 against the kernel's UAPI driven
// independently, and the bench program can measure tcpmd5 against it.
package rawao
