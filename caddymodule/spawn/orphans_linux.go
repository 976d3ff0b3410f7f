package spawn

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// ownerVar tags every spawned process, and what it starts in turn, with the
// Caddy process that spawned it: pid and start time, which together never
// repeat. A Caddy that is SIGKILLed cannot stop its backends; Pdeathsig
// reaches only the process it started, not a wrapper script's children. The
// next Caddy finds the tag of an owner that is gone and kills them.
const ownerVar = "CADDY_FAILOVER_OWNER"

var self = sync.OnceValue(func() string {
	st, err := procstat.Read(os.Getpid())
	if err != nil {
		return strconv.Itoa(os.Getpid())
	}
	return fmt.Sprintf("%d:%d", os.Getpid(), st.Start)
})

// orphanTag is the environment entry that tags this Caddy's processes.
func orphanTag() string { return ownerVar + "=" + self() }

var reapOnce sync.Once

// reapOrphansOnce kills, the first time this Caddy starts a backend, every
// process tagged by a Caddy that no longer runs.
func reapOrphansOnce(log *zap.Logger) {
	reapOnce.Do(func() {
		reapOrphans(func(pid int, owner string) {
			log.Warn("spawn: killed a process left behind by an earlier Caddy that did not stop it",
				zap.Int("pid", pid), zap.String("name", processName(pid)), zap.String("owner", owner))
		})
	})
}

func reapOrphans(report func(pid int, owner string)) {
	names, err := procstat.Pids()
	if err != nil {
		return
	}
	want := []byte(ownerVar + "=")
	for _, pid := range names {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			owner, ok := bytes.CutPrefix(kv, want)
			if !ok {
				continue
			}
			if o := string(owner); o != self() && !ownerAlive(o) {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					report(pid, o)
				}
			}
		}
	}
}

// ownerAlive reports whether the Caddy of tag pid:start still runs.
func ownerAlive(tag string) bool {
	p, s, ok := strings.Cut(tag, ":")
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(s, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return true // not ours to judge
	}
	st, err := procstat.Read(pid)
	return err == nil && st.Start == start && st.Live()
}

// portHolder reports whether addr (host:port) is taken by a listener, and
// the pid of the process that holds it when it can be found (else 0).
func portHolder(addr string) (pid int, busy bool) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return 0, false
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return 0, false
	}
	_, port, _ := net.SplitHostPort(addr)
	n, err := strconv.Atoi(port)
	if err != nil {
		return 0, true
	}
	inode := listeningInode(n)
	if inode == "" {
		return 0, true
	}
	return socketOwner(inode), true
}

// listeningInode finds the socket inode listening on port in
// /proc/net/tcp and tcp6.
func listeningInode(port int) string {
	suffix := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
			fs := strings.Fields(line)
			if len(fs) > 9 && strings.HasSuffix(fs[1], suffix) && fs[3] == "0A" {
				return fs[9]
			}
		}
	}
	return ""
}

// socketOwner finds a process with socket inode open.
func socketOwner(inode string) int {
	pids, err := procstat.Pids()
	if err != nil {
		return 0
	}
	want := "socket:[" + inode + "]"
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(dir + "/" + fd.Name()); err == nil && l == want {
				return pid
			}
		}
	}
	return 0
}

// processName is the command name of pid, for messages.
func processName(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
