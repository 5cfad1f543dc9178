//go:build !linux

package testenv

import "runtime"

// probeKernel finds none of the features: they are Linux's.
func probeKernel(Feature) probeResult {
	return probeResult{absent: runtime.GOOS + " is not Linux"}
}
