package spawn

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parse(t *testing.T, input string) (Config, error) {
	t.Helper()
	d := caddyfile.NewTestDispenser(input)
	require.True(t, d.Next())
	require.Equal(t, "spawn", d.Val())
	var c Config
	err := c.UnmarshalCaddyfile(d)
	return c, err
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        Config
		addrs       []string
	}{
		{
			name: "port range",
			input: `spawn ./backend -addr 127.0.0.1:{port} -id b{index} {
				ports 9001-9003
			}`,
			want:  Config{Command: []string{"./backend", "-addr", "127.0.0.1:{port}", "-id", "b{index}"}, Ports: []int{9001, 9002, 9003}},
			addrs: []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"},
		},
		{
			name: "single ports, repeated, and everything else",
			input: `spawn app --listen {backend} {
				ports 9001 9005
				ports 9010-9011
				env APP_PORT {port}
				env MODE "crash only"
				dir /srv/app
				stop_timeout 2s
			}`,
			want: Config{
				Command:     []string{"app", "--listen", "{backend}"},
				Ports:       []int{9001, 9005, 9010, 9011},
				Env:         map[string]string{"APP_PORT": "{port}", "MODE": "crash only"},
				Dir:         "/srv/app",
				StopTimeout: caddy.Duration(2 * time.Second),
			},
			addrs: []string{"127.0.0.1:9001", "127.0.0.1:9005", "127.0.0.1:9010", "127.0.0.1:9011"},
		},
		{
			name: "upstreams with a range",
			input: `spawn app {host} {port} {
				to 10.0.0.1:8000 localhost:9001-9002
				to [::1]:7000
			}`,
			want:  Config{Command: []string{"app", "{host}", "{port}"}, Upstreams: []string{"10.0.0.1:8000", "localhost:9001", "localhost:9002", "[::1]:7000"}},
			addrs: []string{"10.0.0.1:8000", "localhost:9001", "localhost:9002", "[::1]:7000"},
		},
		{
			// the Caddyfile adapter expands {port} and {host} in a site
			// block before directives are parsed
			name: "shorthands expanded by the adapter are taken back",
			input: `spawn app -addr {http.request.host}:{http.request.port} {
				ports 9001
				env PORT {http.request.port}
				dir /srv/{http.request.port}
			}`,
			want: Config{
				Command: []string{"app", "-addr", "{host}:{port}"},
				Ports:   []int{9001},
				Env:     map[string]string{"PORT": "{port}"},
				Dir:     "/srv/{port}",
			},
			addrs: []string{"127.0.0.1:9001"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(t, tc.input)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.addrs, got.Addrs())
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{`spawn {
			ports 9001
		}`, "missing command"},
		{`spawn`, "missing command"},
		{`spawn app {
			ports 9005-9001
		}`, `ports "9005-9001": the range is backwards (9005 > 9001)`},
		{`spawn app {
			ports abc
		}`, `ports "abc": port "abc" is not a number`},
		{`spawn app {
			ports 9001-x
		}`, `ports "9001-x": port "x" is not a number`},
		{`spawn app {
			ports 0-3
		}`, `ports "0-3": port 0 out of range 1-65535`},
		{`spawn app {
			ports 65535-65536
		}`, `ports "65535-65536": port 65536 out of range 1-65535`},
		{`spawn app {
			ports 1-9000
		}`, `ports "1-9000": 9000 ports, more than 4096`},
		{`spawn app {
			ports
		}`, "spawn ports: expected a port range"},
		{`spawn app {
			to
		}`, "spawn to: expected at least one upstream"},
		{`spawn app {
			to localhost
		}`, `spawn to "localhost": address localhost: missing port in address`},
		{`spawn app {
			to :9001
		}`, `spawn to ":9001": missing host`},
		{`spawn app {
			to localhost:9003-9001
		}`, `spawn to "localhost:9003-9001": the range is backwards`},
		{`spawn app {
			ports 9001
			to localhost:9002
		}`, "give either ports [9001] or upstreams [\"localhost:9002\"], not both"},
		{`spawn app`, "no backends"},
		{`spawn app {
			env FOO
			ports 9001
		}`, "spawn env FOO: expected a name and a value"},
		{`spawn app {
			env FOO a b
		}`, "spawn env FOO a b: expected a name and a value"},
		{`spawn app {
			env A=B c
		}`, `spawn env "A=B": not a variable name`},
		{`spawn app {
			env A b
			env A c
		}`, "spawn env A: set twice"},
		{`spawn app {
			dir
		}`, "spawn dir: expected one path"},
		{`spawn app {
			dir a b
		}`, "spawn dir a b: expected one path"},
		{`spawn app {
			stop_timeout soon
		}`, `spawn stop_timeout "soon": not a positive duration`},
		{`spawn app {
			stop_timeout 0s
		}`, `spawn stop_timeout "0s": not a positive duration`},
		{`spawn app {
			ports 9001
			restart always
		}`, `spawn: unknown subdirective "restart"`},
		{`spawn app {
			ports 9001 9001
		}`, "spawn backend 127.0.0.1:9001: listed twice"},
		{`spawn app {
			ports 9001
			dir /a
			dir /b
		}`, "spawn dir: already specified"},
		{`spawn app {
			ports 9001
			stop_timeout 1s
			stop_timeout 1s
		}`, "spawn stop_timeout: already specified"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := parse(t, tc.input)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestUnmarshalCaddyfileInFailoverBlock(t *testing.T) {
	// The failover handler hands over the dispenser on the spawn token;
	// afterwards, the next token is failover's next subdirective.
	d := caddyfile.NewTestDispenser(`failover {
		spawn app {port} {
			ports 9001-9002
		}
		hold 5s
	}`)
	require.True(t, d.Next())
	var subs []string
	var c Config
	for d.NextBlock(0) {
		subs = append(subs, d.Val())
		if d.Val() == "spawn" {
			require.NoError(t, c.UnmarshalCaddyfile(d))
		} else {
			d.RemainingArgs()
		}
	}
	assert.Equal(t, []string{"spawn", "hold"}, subs)
	assert.Equal(t, Config{Command: []string{"app", "{port}"}, Ports: []int{9001, 9002}}, c)
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "app")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	notExe := filepath.Join(dir, "data")
	require.NoError(t, os.WriteFile(notExe, nil, 0o644))

	ok := []Config{
		{Command: []string{"sh"}, Ports: []int{9001}},
		{Command: []string{exe}, Upstreams: []string{"localhost:9001"}},
		{Command: []string{"./app"}, Dir: dir, Ports: []int{9001}},
		{Command: []string{"{env.NOT_CHECKED}"}, Dir: "/no/{index}", Ports: []int{9001}},
	}
	for _, c := range ok {
		assert.NoError(t, c.Validate(), "%+v", c)
	}

	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Ports: []int{9001}}, "missing command"},
		{Config{Command: []string{" "}, Ports: []int{9001}}, "missing command"},
		{Config{Command: []string{"sh"}}, "no backends"},
		{Config{Command: []string{"sh"}, Ports: []int{70000}}, "spawn port 70000: out of range 1-65535"},
		{Config{Command: []string{"sh"}, Ports: []int{0}}, "spawn port 0: out of range"},
		{Config{Command: []string{"sh"}, Upstreams: []string{"localhost"}}, `spawn upstream "localhost": not host:port`},
		{Config{Command: []string{"sh"}, Upstreams: []string{"localhost:http"}}, `spawn upstream "localhost:http": port "http" is not a number`},
		{Config{Command: []string{"sh"}, Upstreams: []string{":80"}}, `spawn upstream ":80": missing host`},
		{Config{Command: []string{"sh"}, Upstreams: []string{"a:1", "a:1"}}, "spawn backend a:1: listed twice"},
		{Config{Command: []string{"sh"}, Ports: []int{1}, Env: map[string]string{"": "x"}}, `spawn env "": not a variable name`},
		{Config{Command: []string{"sh"}, Ports: []int{1}, StopTimeout: -1}, "stop_timeout -1ns: must not be negative"},
		{Config{Command: []string{"sh"}, Ports: []int{1}, Dir: filepath.Join(dir, "nope")}, `spawn dir "` + filepath.Join(dir, "nope") + `"`},
		{Config{Command: []string{"sh"}, Ports: []int{1}, Dir: exe}, `spawn dir "` + exe + `": not a directory`},
		{Config{Command: []string{"no-such-program-here"}, Ports: []int{1}}, `spawn command "no-such-program-here": exec: "no-such-program-here": executable file not found`},
		{Config{Command: []string{notExe}, Ports: []int{1}}, `spawn command "` + notExe + `"`},
		{Config{Command: []string{"./nope"}, Dir: dir, Ports: []int{1}}, `spawn command "./nope"`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			err := tc.c.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestSpecs(t *testing.T) {
	t.Setenv("SPAWN_TEST_HOME", "/home/x")
	t.Setenv("SPAWN_TEST_SECRET", "s3cret")
	c := Config{
		Command:   []string{"app", "-addr", "{backend}", "-p", "{port}", "-h", "{host}", "-i", "{index}", "{env.SPAWN_TEST_HOME}", "{unknown}", `{"json":1}`},
		Upstreams: []string{"10.0.0.1:80", "[::1]:81"},
		Env:       map[string]string{"PORT": "{port}"},
		Dir:       "/srv/{index}",
		PassEnv:   []string{"SPAWN_TEST_HOME"},
	}
	ss := c.specs()
	require.Len(t, ss, 2)
	assert.Equal(t, []string{"app", "-addr", "[::1]:81", "-p", "81", "-h", "::1", "-i", "1", "/home/x", "{unknown}", `{"json":1}`}, ss[1].Argv)
	assert.Equal(t, "/srv/1", ss[1].Dir)
	assert.Contains(t, ss[1].Env, "PORT=81")
	assert.Contains(t, ss[1].Env, "SPAWN_TEST_HOME=/home/x", "pass_env passes it")
	assert.Contains(t, ss[1].Env, "PATH="+os.Getenv("PATH"))
	assert.Equal(t, orphanTag(), ss[1].Env[len(ss[1].Env)-1], "the orphan tag comes last: nothing overrides it")
	for _, kv := range ss[1].Env {
		assert.NotContains(t, kv, "SPAWN_TEST_SECRET", "Caddy's environment is not inherited")
	}
	assert.Equal(t, 0, ss[0].Index)
	assert.Equal(t, "10.0.0.1:80", ss[0].Addr)

	all := Config{Command: []string{"app"}, Ports: []int{1}, PassEnv: []string{"*"}}.specs()[0]
	assert.Contains(t, all.Env, "SPAWN_TEST_SECRET=s3cret", "pass_env * passes everything")

	assert.True(t, ss[0].sameProcess(c.specs()[0]))
	c2 := c
	c2.Env = map[string]string{"PORT": "{port}", "X": "1"}
	assert.False(t, ss[0].sameProcess(c2.specs()[0]), "an env change is another process")
}

func TestBackoffDelay(t *testing.T) {
	ms := time.Millisecond
	want := []time.Duration{0, 0, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 12800 * ms, 25600 * ms, 30 * time.Second, 30 * time.Second}
	for n := 0; n < len(want); n++ {
		assert.Equal(t, want[n], backoffDelay(n), "n=%d", n)
	}
	assert.Equal(t, 30*time.Second, backoffDelay(1000))

	var b backoff
	t0 := time.Now()
	assert.Equal(t, time.Duration(0), b.exit(t0, t0.Add(ms)), "first exit: start at once")
	assert.Equal(t, 100*ms, b.exit(t0.Add(2*ms), t0.Add(3*ms)))
	assert.Equal(t, 200*ms, b.exit(t0.Add(110*ms), t0.Add(900*ms)))
	assert.Equal(t, 3, b.exits)
	assert.Equal(t, t0, b.first)
	// a run of stableAfter resets the count
	late := t0.Add(time.Minute)
	assert.Equal(t, time.Duration(0), b.exit(late, late.Add(stableAfter)))
	assert.Equal(t, 1, b.exits)
	assert.Equal(t, late, b.first)
}
