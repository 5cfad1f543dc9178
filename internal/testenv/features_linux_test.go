package testenv_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestFeatures logs what this kernel has, so that every run of the suite
// records it, holds each probe to a definite answer as root, and, on a
// kernel declared to have features (tools/kernels/run), requires each.
func TestFeatures(t *testing.T) {
	testenv.RequireRoot(t)
	t.Logf("kernel features:\n%s", testenv.Report())
	for _, f := range testenv.Features {
		_, _, err := testenv.Has(f)
		if err != nil {
			testenv.Missing(t, "probing "+string(f)+": "+err.Error(), "install iproute2")
		}
	}
	declared := os.Getenv("TCPMD5_EXPECT_FEATURES")
	if declared == "" {
		return
	}
	for _, f := range strings.Split(declared, ",") {
		ok, absent, _ := testenv.Has(testenv.Feature(f))
		require.True(t, ok, "declared feature %s is absent: %s", f, absent)
	}
}
