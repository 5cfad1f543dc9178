package tcpmd5_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// Keys print without their secrets, whatever the verb.
func ExampleParseKey() {
	k, err := tcpmd5.ParseKey("192.0.2.0/24", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(k)
	fmt.Printf("%#v\n", k)

	_, err = tcpmd5.ParseKey("192.0.2.1/24", "not-a-real-secret")
	fmt.Println(err)
	// Output:
	// 192.0.2.0/24 secret:<redacted>
	// tcpmd5.Key{Peer:netip.MustParsePrefix("192.0.2.0/24"), Secret:<redacted>, Ifindex:0}
	// tcpmd5: key for 192.0.2.1/24: the prefix has host bits set; did you mean 192.0.2.0/24?
}

// A BGP speaker listens on port 179 for two peers, each with its own key.
// Connections from any other address are closed at Accept.
func ExampleListen() {
	peer1, err := tcpmd5.ParseKey("192.0.2.1", "not-a-real-secret-1")
	if err != nil {
		log.Fatal(err)
	}
	peer2, err := tcpmd5.ParseKey("2001:db8::2", "not-a-real-secret-2")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := tcpmd5.Listen("tcp", ":179", peer1, peer2)
	if err != nil {
		log.Fatal(err) // errors.Is(err, tcpmd5.ErrMD5Unsupported) off Linux
	}
	defer ln.Close()
	for {
		conn, err := ln.Accept() // a *net.TCPConn, every segment signed
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer conn.Close()
			// Speak BGP on conn.
		}()
	}
}

// A Dialer signs the SYN with the key for the address it dials.
func ExampleDialer() {
	k, err := tcpmd5.ParseKey("192.0.2.1", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}
	d.Timeout = 5 * time.Second
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP("192.0.2.2")}
	conn, err := d.Dial("tcp", "192.0.2.1:179")
	if err != nil {
		// A peer with another key stays silent: the error is a timeout
		// that says to check the key on both sides.
		log.Fatal(err)
	}
	defer conn.Close()
}

// Peers come and go while the listener runs.
func ExampleListener_SetKey() {
	ln, err := tcpmd5.Listen("tcp", ":179")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	k, err := tcpmd5.ParseKey("198.51.100.0/24", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	if err := ln.SetKey(k); err != nil { // one setsockopt(2), however many keys
		log.Fatal(err)
	}
	// Later: the peers leave. Established sessions keep their key.
	if err := ln.RemoveKey(tcpmd5.Key{Peer: k.Peer}); err != nil {
		log.Fatal(err)
	}
}

// An http.Server serves only clients that sign with the shared key; the
// client side is an http.Transport dialing through a Dialer.
func Example_httpServer() {
	clients, err := tcpmd5.ParseKey("203.0.113.0/24", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := tcpmd5.Listen("tcp", ":8443", clients)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello over signed TCP")
	})}
	go srv.Serve(ln)

	server, err := tcpmd5.ParseKey("203.0.113.1", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{server}}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := client.Get("http://203.0.113.1:8443/")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}

// One listener serves a peer that still signs with MD5 and one that moved
// to TCP-AO: each peer is MD5 or AO, never both.
func ExampleListenConfig_tcpAO() {
	md5, err := tcpmd5.ParseKey("192.0.2.1", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	// We sign with KeyID 1 (the peer's RecvID) and verify KeyID 2 (its SendID).
	ao, err := tcpmd5.ParseAOKey("192.0.2.2", "send=1 recv=2 alg=hmac(sha1)", "not-a-real-secret-either")
	if err != nil {
		log.Fatal(err)
	}
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{md5}, AOKeys: []tcpmd5.AOKey{ao}}
	ln, err := lc.Listen(context.Background(), "tcp", ":179")
	if err != nil {
		log.Fatal(err) // ErrAOUnsupported before Linux 6.7 or without CONFIG_TCP_AO
	}
	defer ln.Close()
	conn, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}

// A Dialer with TCP-AO keys signs the SYN with the first key for the
// destination and asks the peer to sign with that key's RecvID.
func ExampleDialer_tcpAO() {
	k, err := tcpmd5.ParseAOKey("192.0.2.1", "send=2 recv=1 alg=hmac(sha1)", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	d := &tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{k}}
	d.Timeout = 5 * time.Second
	conn, err := d.Dial("tcp", "192.0.2.1:179")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	st, err := tcpmd5.AOInfo(conn.(*net.TCPConn))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("signing with KeyID", st.Current, "verified segments:", st.Good)
}

// A key change on a live TCP-AO session, without a reset (RFC 5925
// section 7.3). Both ends run the same steps with their own KeyIDs: add
// the new key, ask the peer for it, wait until both sign with it, then
// remove the old one.
func ExampleSetAORNext() {
	var conn *net.TCPConn // an established TCP-AO connection, from Accept or Dial
	old, err := tcpmd5.ParseAOKey("192.0.2.1", "send=2 recv=1 alg=hmac(sha1)", "not-a-real-secret")
	if err != nil {
		log.Fatal(err)
	}
	next, err := tcpmd5.ParseAOKey("192.0.2.1", "send=4 recv=3 alg=hmac(sha256)", "not-a-real-secret-2")
	if err != nil {
		log.Fatal(err)
	}
	if err := tcpmd5.AddAOKey(conn, next); err != nil {
		log.Fatal(err)
	}
	// Ask the peer to sign with its side of the new key; once it does, our
	// kernel follows the peer's request for our side.
	if err := tcpmd5.SetAORNext(conn, next.RecvID); err != nil {
		log.Fatal(err)
	}
	for {
		st, err := tcpmd5.AOInfo(conn)
		if err != nil {
			log.Fatal(err)
		}
		if st.Current == next.SendID && st.RNext == next.RecvID {
			break
		}
		time.Sleep(100 * time.Millisecond) // segments flow meanwhile: the peer may be slower
	}
	if err := tcpmd5.RemoveAOKey(conn, old); err != nil {
		log.Fatal(err)
	}
}

// A key chain rolls a BGP speaker's TCP-AO key over every session without
// a reset: the new key is accepted at once and sent from the change
// window; the old one goes a minute after it. Listener and Dialer share
// the chain, and every connection they return follows it.
func ExampleKeyChain() {
	oldKey, err := tcpmd5.ParseAOKey("192.0.2.0/24", "send=1 recv=1 alg=hmac(sha256)", "not-a-real-secret-old")
	if err != nil {
		log.Fatal(err)
	}
	newKey, err := tcpmd5.ParseAOKey("192.0.2.0/24", "send=2 recv=2 alg=hmac(sha256)", "not-a-real-secret-new")
	if err != nil {
		log.Fatal(err)
	}
	window := time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)
	chain := tcpmd5.NewKeyChain()
	ended := tcpmd5.Lifetime{Until: window.Add(time.Minute)}
	if err := chain.SetAOKey(oldKey, ended, ended); err != nil {
		log.Fatal(err)
	}
	if err := chain.SetAOKey(newKey, tcpmd5.Lifetime{From: window}, tcpmd5.Lifetime{}); err != nil {
		log.Fatal(err)
	}
	ln, err := (&tcpmd5.ListenConfig{KeyChain: chain}).Listen(context.Background(), "tcp", ":179")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	d := &tcpmd5.Dialer{KeyChain: chain}
	if _, err := d.Dial("tcp", "192.0.2.1:179"); err != nil {
		log.Print(err)
	}
	for _, s := range chain.Sessions() {
		log.Printf("%s: current %d, rnext %d, lagging %v", s.Remote, s.Current, s.RNext, s.Lagging)
	}
}
