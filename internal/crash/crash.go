// Package crash lets integration tests kill a process at a named point, as
// a kill -9 or a power cut would, to check that every start-up after it
// finds consistent state (docs/architecture.md, "Crash consistency").
//
// A point fires when the environment variable SOCI_CRASH_POINT names it:
// the process sends itself SIGKILL, so no deferred function, no
// finaliser and no buffered log runs. Without the variable Point costs an
// environment lookup.
package crash

import (
	"os"
	"syscall"
)

// Env is the variable naming the point at which to die.
const Env = "SOCI_CRASH_POINT"

// Point kills the process with SIGKILL if SOCI_CRASH_POINT is name.
func Point(name string) {
	if v, ok := os.LookupEnv(Env); !ok || v != name {
		return
	}
	// Stderr is unbuffered: the test can see which point fired.
	os.Stderr.WriteString("crash point " + name + ": SIGKILL\n")
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late, but never return
}
