package caddymodule

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
)

// KeyHeader is the header that names one logical request across its
// replays (IETF draft-ietf-httpapi-idempotency-key-header).
const KeyHeader = "Idempotency-Key"

// IdempotencyKeys is what a route does with Idempotency-Key. In JSON it is
// false (off), true (honour: a request that carries a key is replayable), or
// "generate" (honour, and give a key to every non-idempotent request that
// carries none, so that it is replayable too). The Caddyfile's
// `idempotency_key` is true, `idempotency_key generate` is "generate".
type IdempotencyKeys uint8

// The IdempotencyKeys modes.
const (
	KeysOff IdempotencyKeys = iota
	KeysHonor
	KeysGenerate
)

// MarshalJSON writes false, true or "generate".
func (k IdempotencyKeys) MarshalJSON() ([]byte, error) {
	switch k {
	case KeysOff:
		return []byte("false"), nil
	case KeysHonor:
		return []byte("true"), nil
	case KeysGenerate:
		return []byte(`"generate"`), nil
	}
	return nil, fmt.Errorf("idempotency_key: unknown mode %d", k)
}

// UnmarshalJSON reads true, false or "generate"; true is what the field was
// before it could generate keys, and still means honour.
func (k *IdempotencyKeys) UnmarshalJSON(b []byte) error {
	var on bool
	if err := json.Unmarshal(b, &on); err == nil {
		*k = KeysOff
		if on {
			*k = KeysHonor
		}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil && s == "generate" {
		*k = KeysGenerate
		return nil
	}
	return fmt.Errorf("failover: idempotency_key %s: want true, false or \"generate\"", b)
}

// giveKey gives a request the route does not replay by its method an
// Idempotency-Key, unless it carries one: from here on every replay of it
// carries the same key, so a backend that keeps the contract
// (docs/idempotency.md) executes it at most once.
func (h *Handler) giveKey(r *http.Request) {
	if _, idempotent := h.methods[r.Method]; idempotent || r.Header.Get(KeyHeader) != "" {
		return
	}
	r.Header.Set(KeyHeader, newKey())
}

// newKey is a random (version 4) UUID from crypto/rand, which never fails.
func newKey() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant RFC 9562
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	hex.Encode(s[9:13], b[4:6])
	hex.Encode(s[14:18], b[6:8])
	hex.Encode(s[19:23], b[8:10])
	hex.Encode(s[24:36], b[10:16])
	s[8], s[13], s[18], s[23] = '-', '-', '-', '-'
	return string(s[:])
}
