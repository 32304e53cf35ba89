// Command soci makes, inspects and pushes SOCI indices for images in
// containerd: the CLI that nerdctl drives (`nerdctl push --snapshotter=soci`
// runs `soci create` and `soci push`; `nerdctl image convert --soci` runs
// `soci --version` and `soci convert`).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/fastsoci/soci-snapshotter/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args (args[0] is the program name) and
// returns the exit code. Errors are printed as one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	if err := app.RunContext(ctx, args); err != nil {
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		fmt.Fprintf(stderr, "soci: %s\n", msg)
		return 1
	}
	return 0
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                 "soci",
		Usage:                "build, inspect and push SOCI indices for lazily loaded container images",
		Writer:               stdout,
		ErrWriter:            stderr,
		HideVersion:          true,
		EnableBashCompletion: false,
		Flags:                globalFlags(),
		Action: func(c *cli.Context) error {
			if c.Bool(versionFlag) {
				fmt.Fprintf(c.App.Writer, "soci version %s %s\n", version.Version, version.Revision)
				return nil
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			createCommand(),
			pushCommand(),
			convertCommand(),
			indexCommand(),
			ztocCommand(),
			prefetchCommand(),
			rebuildDBCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintf(c.App.Writer, "soci version %s %s\n", version.Version, version.Revision)
					return nil
				},
			},
		},
	}
}
