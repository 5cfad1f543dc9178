package probe_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/probe"
)

// TestResultJSON: every field is present, null where it has no value, and
// a peer on this host has its counters and drops as an object and a list
// even when nothing moved.
func TestResultJSON(t *testing.T) {
	b, err := json.Marshal(probe.Result{Target: "192.0.2.1:179", Verdict: probe.KeyMismatch, Summary: "s"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"target":"192.0.2.1:179","source":null,"ttl_security":0,"verdict":"key-mismatch","summary":"s",
		"signed_error":null,"unsigned":null,"greeting":null,"peer_on_this_host":false,"counters_moved":null,
		"counter_note":null,"drops":null,"drops_note":null}`, string(b))

	b, err = json.Marshal(probe.Result{Target: "127.0.0.1:179", Source: "127.0.0.2", Verdict: probe.Signed, PeerOnThisHost: true})
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, "127.0.0.2", got["source"])
	assert.Equal(t, map[string]any{}, got["counters_moved"])
	assert.Equal(t, []any{}, got["drops"])

	b, err = json.Marshal(probe.Result{Target: "127.0.0.1:179", PeerOnThisHost: true, DropsNote: "no permission"})
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Nil(t, got["drops"], "drops not watched are null, not none")
}
