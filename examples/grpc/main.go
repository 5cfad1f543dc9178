// Command grpc serves gRPC over TCP connections signed with RFC 2385 MD5
// signatures, or RFC 5925 TCP-AO, and calls it: a tcpmd5 Listener is a
// net.Listener for grpc.Server.Serve, and a tcpmd5 Dialer dials for
// grpc.WithContextDialer. Nothing else of gRPC changes.
//
//	go run ./grpc -listen 127.0.0.1:50051 -peer 127.0.0.1 &   # secret from $TCPMD5_SECRET
//	go run ./grpc -call 127.0.0.1:50051
//
// The service is gRPC's own health service, so that the example needs no
// generated code.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tcplowlevel/tcpmd5"
)

// serve serves the health service on ln until it is closed.
func serve(ln net.Listener) *grpc.Server {
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }() // ends when Stop closes ln
	return srv
}

// dial returns a client of target whose connections dialContext makes:
// a tcpmd5.Dialer's DialContext, so that each is signed.
func dial(dialContext func(ctx context.Context, network, addr string) (net.Conn, error), target string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()), // the segments are signed, not encrypted: add TLS as ever
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialContext(ctx, "tcp", addr)
		}))
}

// check calls the health service once.
func check(ctx context.Context, cc *grpc.ClientConn) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

func main() {
	listen := flag.String("listen", "", "serve at `ADDR`")
	peer := flag.String("peer", "", "with -listen: the `PEER` (address or prefix) whose connections are signed")
	call := flag.String("call", "", "call the server at `ADDR`")
	flag.Parse()
	secret := os.Getenv("TCPMD5_SECRET")
	if secret == "" {
		log.Fatal("set TCPMD5_SECRET to the secret shared with the peer")
	}
	switch {
	case *listen != "":
		k, err := tcpmd5.ParseKey(*peer, secret)
		if err != nil {
			log.Fatal(err)
		}
		ln, err := tcpmd5.Listen("tcp", *listen, k)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("serving gRPC at %s, signed for %s", ln.Addr(), *peer)
		serve(ln)
		select {}
	case *call != "":
		host, _, err := net.SplitHostPort(*call)
		if err != nil {
			log.Fatal(err)
		}
		k, err := tcpmd5.ParseKey(host, secret)
		if err != nil {
			log.Fatal(err)
		}
		d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}
		cc, err := dial(d.DialContext, *call)
		if err != nil {
			log.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		status, err := check(ctx, cc)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(status)
	default:
		flag.Usage()
		os.Exit(2)
	}
}
