// Command soci makes and inspects SOCI indices. For now it only reports its
// version, in the form nerdctl parses: "soci version vX.Y.Z <commit>".
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/fastsoci/soci-snapshotter/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		switch a {
		case "--version", "-v", "version":
			fmt.Fprintf(stdout, "soci version %s %s\n", version.Version, version.Revision)
			return 0
		}
	}
	fmt.Fprintln(stderr, "usage: soci --version (other commands are not implemented yet)")
	return 2
}
