// Package caddymodule is everything of caddy-failover that knows Caddy: the
// failover handler and its Caddyfile directive, the selection policy and
// transport wrapper it presets on reverse_proxy, and the pool state that
// survives config reloads.
package caddymodule
