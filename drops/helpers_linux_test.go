package drops_test

import "github.com/tcplowlevel/tcpmd5/internal/testkit"

// The helpers of these tests live in internal/testkit, which the tests of
// package tcpmd5 and the end-to-end tests share.
const (
	secretA     = testkit.SecretA
	secretB     = testkit.SecretB
	mustConnect = testkit.MustConnect
)

var (
	key         = testkit.Key
	listen      = testkit.Listen
	dialer      = testkit.Dialer
	dropDial    = testkit.DropDial
	requireIPv6 = testkit.RequireIPv6
	requireMD5  = testkit.RequireMD5
	counters    = testkit.Counters
)
