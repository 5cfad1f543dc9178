package tcpmd5

import (
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// InChild runs test t again in a child process of the test binary, with
// the environment variable env set, and requires that it passes and prints
// each of want. It reports whether this process is that child, which then
// runs the test's body: a test that changes what the whole process holds
// (its descriptor limit, its descriptor table) does it there. The tests of
// package tcpmd5_test use it too.
func InChild(t *testing.T, env string, want ...string) bool {
	t.Helper()
	if os.Getenv(env) != "" {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count", "1", "-test.v")
	cmd.Env = append(os.Environ(), env+"=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: "+t.Name(), "%s", out)
	for _, w := range want {
		require.Contains(t, string(out), w, "%s", out)
	}
	return false
}
