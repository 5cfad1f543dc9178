// Package testenv decides what a test does when the machine lacks something
// it needs: skip with the reason and the remedy, or, under CI (CI=true),
// fail, because CI installs everything and a skip there hides a broken
// install step.
package testenv

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// Missing skips t, or fails it under CI, saying what is missing and how to
// get it.
func Missing(t testing.TB, what, remedy string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; under CI this is a failure, not a skip: %s", what, remedy)
	}
	t.Skipf("%s; %s", what, remedy)
}

// RequireRoot skips or fails t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "this test needs root (network namespaces, sysctls)", "run it as root, e.g. sudo -E go test ./...")
	}
}

// RequireTool skips or fails t unless name is on PATH, and returns its path.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" is not installed", "install it with: apt-get install -y "+pkg)
	}
	return p
}

// WithoutCaps returns argv prefixed so that it runs with an empty
// capability bounding set (setpriv): even root has no capability there.
func WithoutCaps(t testing.TB, argv ...string) []string {
	t.Helper()
	setpriv := RequireTool(t, "setpriv", "util-linux")
	return append([]string{setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--"}, argv...)
}

// FillDescriptors opens the null device until the process is out of file
// descriptors (EMFILE) and returns the files it opened, for the caller to
// close; err is whatever else stopped it.
func FillDescriptors() ([]*os.File, error) {
	var fill []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			return fill, nil
		}
		if err != nil {
			return fill, err
		}
		fill = append(fill, f)
	}
}
