// Command soci-snapshotter-grpc is the daemon containerd talks to through a
// proxy_plugins entry: it serves the snapshots gRPC API on a unix socket.
//
//	soci-snapshotter-grpc [--address A] [--config F] [--root D] [--log-level L]
//	soci-snapshotter-grpc config default|dump [--config F]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/internal/version"
	"github.com/fastsoci/soci-snapshotter/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "soci-snapshotter-grpc: %v\n", err)
	}
	os.Exit(exitCode(err))
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	default:
		return 1
	}
}

type flags struct {
	address     string
	configPath  string
	root        string
	logLevel    string
	showVersion bool
	configSet   bool
}

func parseFlags(args []string, stderr io.Writer) (*flags, []string, error) {
	f := &flags{}
	fset := flag.NewFlagSet("soci-snapshotter-grpc", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.StringVar(&f.address, "address", config.DefaultAddress, "socket to serve on: a path, unix://PATH, or fd:// (systemd socket activation)")
	fset.StringVar(&f.configPath, "config", config.DefaultConfigPath, "path to the TOML configuration file")
	fset.StringVar(&f.root, "root", config.DefaultRootPath, "directory for the daemon's state")
	fset.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fset.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	if err := fset.Parse(args); err != nil {
		return nil, nil, err
	}
	fset.Visit(func(fl *flag.Flag) {
		if fl.Name == "config" {
			f.configSet = true
		}
	})
	return f, fset.Args(), nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, rest, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if f.showVersion {
		fmt.Fprintf(stdout, "soci-snapshotter-grpc version %s %s\n", version.Version, version.Revision)
		return nil
	}
	if len(rest) > 0 {
		return configCommand(rest, f, stdout)
	}
	if err := log.SetLevel(f.logLevel); err != nil {
		return fmt.Errorf("--log-level %q: %w", f.logLevel, err)
	}
	log.L.Logger.SetOutput(stderr)
	cfg, err := config.Load(f.configPath, f.configSet)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, f)
}

func serve(ctx context.Context, cfg *config.Config, f *flags) error {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("root", f.root))
	svc, err := service.New(ctx, cfg, f.root)
	if err != nil {
		return err
	}
	l, err := service.Listen(f.address)
	if err != nil {
		svc.Close()
		return err
	}
	serveErr := svc.Serve(ctx, l)
	closeErr := svc.Close()
	if serveErr != nil {
		return serveErr
	}
	if closeErr == nil {
		log.G(ctx).Info("stopped")
	}
	return closeErr
}

// configCommand handles `config default` and `config dump`.
func configCommand(args []string, f *flags, stdout io.Writer) error {
	if args[0] != "config" || len(args) != 2 {
		return fmt.Errorf("unknown command %q (want: config default|dump)", args)
	}
	switch args[1] {
	case "default":
		return config.Default().Encode(stdout)
	case "dump":
		cfg, err := config.Load(f.configPath, f.configSet)
		if err != nil {
			return err
		}
		return cfg.Encode(stdout)
	default:
		return fmt.Errorf("unknown config command %q (want: default or dump)", args[1])
	}
}
