package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
)

// runEnv makes the test binary act as soci: the artifact database of the
// soci library is one per process, so each command runs in its own.
const runEnv = "SOCI_CLI_TEST_AS_SOCI"

func TestMain(m *testing.M) {
	if os.Getenv(runEnv) == "1" {
		os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// runSoci runs the CLI in a child process and returns stdout, stderr and
// the exit code.
func runSoci(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runEnv+"=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return out.String(), errOut.String(), exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), 0
}
