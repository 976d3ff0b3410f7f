package spawn

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// baseVars are what every spawned process gets of Caddy's environment, as
// systemd gives its services a clean environment (PATH, LANG, USER,
// LOGNAME, HOME, SHELL) rather than the manager's own: a backend must not
// see Caddy's secrets (API tokens, DNS credentials) unless it is given them.
var baseVars = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR"}

// defaultPath is PATH for a Caddy started without one (systemd's default).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// baseEnv is the environment of every process of c before its env: the base
// variables and pass_env's, from Caddy's environment, sorted by name.
func (c Config) baseEnv() []string {
	if slices.Contains(c.PassEnv, "*") {
		env := os.Environ()
		slices.Sort(env)
		return env
	}
	var env []string
	for _, k := range slices.Concat(baseVars, c.PassEnv) {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		} else if k == "PATH" {
			env = append(env, "PATH="+defaultPath)
		}
	}
	slices.Sort(env)
	return slices.Compact(env)
}

// checkPassEnv checks pass_env: variable names, or * alone.
func checkPassEnv(names []string) error {
	for _, k := range names {
		switch {
		case k == "*" && len(names) > 1:
			return fmt.Errorf("spawn pass_env %q: * passes every variable; give it alone", strings.Join(names, " "))
		case k == "*":
		case k == "" || strings.ContainsAny(k, "=\x00 "):
			return fmt.Errorf("spawn pass_env %q: not a variable name", k)
		}
	}
	return nil
}
