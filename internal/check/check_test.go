package check_test

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/check"
)

// TestResultJSON: a row carries its stable id, its status in lower case,
// its number with the unit, and null for both where it has none.
func TestResultJSON(t *testing.T) {
	n := 131072
	for _, tc := range []struct {
		r    check.Result
		want string
	}{
		{check.Result{Check: "optmem_max", Status: check.StatusInfo, Value: "131072 bytes", Number: &n, Detail: "d"},
			`{"id":"optmem_max","check":"optmem_max","status":"info","value":"131072 bytes","number":131072,"unit":"bytes","detail":"d"}`},
		{check.Result{Check: "self-test: right key", Status: check.StatusFail, Value: "no connection"},
			`{"id":"self_test_right_key","check":"self-test: right key","status":"fail","value":"no connection","number":null,"unit":null,"detail":""}`},
		{check.Result{Check: "MPTCP listeners", Status: check.StatusInfo, Value: "yes"},
			`{"id":"mptcp_listeners","check":"MPTCP listeners","status":"info","value":"yes","number":null,"unit":null,"detail":""}`},
	} {
		b, err := json.Marshal(tc.r)
		require.NoError(t, err)
		assert.JSONEq(t, tc.want, string(b))
	}
}

// TestIDs: the ids are unique snake_case names, and every row a run here
// makes has one of them.
func TestIDs(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z0-9]+(_[a-z0-9]+)*$`)
	seen := map[string]bool{}
	for _, id := range check.IDs {
		assert.Regexp(t, snake, id)
		assert.False(t, seen[id], "%s twice", id)
		seen[id] = true
	}
	r := check.Run(context.Background(), check.Options{})
	require.NotEmpty(t, r.Results)
	for _, res := range r.Results {
		assert.True(t, slices.Contains(check.IDs, res.ID()), "the row %q has the id %q, which IDs does not list", res.Check, res.ID())
	}
}
