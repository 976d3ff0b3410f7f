package restart

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/require"
)

// holder is how the lead's config holds a restarter.
type holder struct {
	RestartRaw json.RawMessage `json:"restart,omitempty" caddy:"namespace=failover.restarters inline_key=restarter"`
}

// newContext is a Caddy context for a test, cancelled at its end.
func newContext(t *testing.T) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// load loads a restarter from its JSON the way the handler does: with
// ctx.LoadModule on a field tagged with the namespace and inline key.
func load(t *testing.T, raw string) (Restarter, error) {
	t.Helper()
	h := holder{RestartRaw: json.RawMessage(raw)}
	mod, err := newContext(t).LoadModule(&h, "RestartRaw")
	if err != nil {
		return nil, err
	}
	r, ok := mod.(Restarter)
	require.True(t, ok, "module %T is not a Restarter", mod)
	return r, nil
}

// mustLoad is load that fails the test on error.
func mustLoad(t *testing.T, raw string) Restarter {
	t.Helper()
	r, err := load(t, raw)
	require.NoError(t, err)
	return r
}

// mustJSON marshals v.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
