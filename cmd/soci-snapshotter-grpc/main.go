// Command soci-snapshotter-grpc is the daemon containerd talks to through a
// proxy_plugins entry: it serves the snapshots gRPC API on a unix socket.
//
//	soci-snapshotter-grpc [--address A] [--config F] [--root D] [--log-level L] [--log-format json|text]
//	soci-snapshotter-grpc [--config F] config default|dump
//	soci-snapshotter-grpc [--config F] config check [--strict] [FILE]
//	soci-snapshotter-grpc [--root D] cleanup
//
// The lazily loaded layers are served by a FUSE host process the daemon
// starts (the hidden subcommand fuse-host, with the daemon's global flags
// and --id): it outlives the daemon, so that running containers survive a
// restart. cleanup shuts every FUSE host of the root down, unmounting their
// layers (for uninstalls; it refuses while a daemon runs on the root).
//
// As upstream's daemon, the flags --address, --config, --log-level and
// --root take their default from SOCI_SNAPSHOTTER_ADDRESS,
// SOCI_SNAPSHOTTER_CONFIG, SOCI_SNAPSHOTTER_LOG_LEVEL and
// SOCI_SNAPSHOTTER_ROOT when those are set (a flag on the command line wins),
// and logs are JSON; --log-format (or SOCI_SNAPSHOTTER_LOG_FORMAT) text
// writes logrus's text format instead.
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
	"github.com/fastsoci/soci-snapshotter/fusehost"
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
	logFormat   string
	showVersion bool
	// configSet is true when the config path was given, on the command
	// line or in the environment.
	configSet bool
}

// Environment variables upstream's daemon reads as flag defaults, and ours
// for --log-format.
const (
	envAddress   = "SOCI_SNAPSHOTTER_ADDRESS"
	envConfig    = "SOCI_SNAPSHOTTER_CONFIG"
	envLogLevel  = "SOCI_SNAPSHOTTER_LOG_LEVEL"
	envRoot      = "SOCI_SNAPSHOTTER_ROOT"
	envLogFormat = "SOCI_SNAPSHOTTER_LOG_FORMAT"
)

// parseFlags parses the global flags. getenv supplies the environment: a
// variable that is set (even to "") replaces the flag's built-in default,
// and a flag on the command line replaces both, as upstream's CLI library
// orders them.
func parseFlags(args []string, getenv func(string) (string, bool), stderr io.Writer) (*flags, []string, error) {
	f := &flags{}
	fromEnv := func(name, def string) string {
		if v, ok := getenv(name); ok {
			return v
		}
		return def
	}
	fset := flag.NewFlagSet("soci-snapshotter-grpc", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.StringVar(&f.address, "address", fromEnv(envAddress, config.DefaultAddress),
		"socket to serve on: a path, unix://PATH, or fd:// (systemd socket activation) [$"+envAddress+"]")
	fset.StringVar(&f.configPath, "config", fromEnv(envConfig, config.DefaultConfigPath),
		"path to the TOML configuration file [$"+envConfig+"]")
	fset.StringVar(&f.root, "root", fromEnv(envRoot, config.DefaultRootPath),
		"directory for the daemon's state [$"+envRoot+"]")
	fset.StringVar(&f.logLevel, "log-level", fromEnv(envLogLevel, "info"),
		"log level: trace, debug, info, warn, error, fatal, panic [$"+envLogLevel+"]")
	fset.StringVar(&f.logFormat, "log-format", fromEnv(envLogFormat, string(log.JSONFormat)),
		"log format: json (as upstream) or text [$"+envLogFormat+"]")
	fset.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	if err := fset.Parse(args); err != nil {
		return nil, nil, err
	}
	_, f.configSet = getenv(envConfig)
	fset.Visit(func(fl *flag.Flag) {
		if fl.Name == "config" {
			f.configSet = true
		}
	})
	return f, fset.Args(), nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, rest, err := parseFlags(args, os.LookupEnv, stderr)
	if err != nil {
		return err
	}
	if f.showVersion {
		fmt.Fprintf(stdout, "soci-snapshotter-grpc version %s %s\n", version.Version, version.Revision)
		return nil
	}
	if len(rest) > 0 {
		switch rest[0] {
		case "fuse-host":
			return fuseHost(ctx, rest[1:], f, stderr)
		case "cleanup":
			return cleanup(ctx, rest[1:], f, stderr)
		}
		return configCommand(rest, f, stdout, stderr)
	}
	if err := setupLogging(f.logLevel, f.logFormat, stderr); err != nil {
		return err
	}
	log.G(ctx).WithField("version", version.Version).WithField("revision", version.Revision).
		Info("starting soci-snapshotter-grpc")
	cfg, notices, err := config.LoadFile(f.configPath, f.configSet)
	if err != nil {
		return err
	}
	logNotices(ctx, f.configPath, notices)
	return serve(ctx, cfg, f)
}

// setupLogging sets the level and format of the process's logger (that of
// containerd/log, which every package logs through) and sends it to w.
func setupLogging(level, format string, w io.Writer) error {
	if err := log.SetLevel(level); err != nil {
		return fmt.Errorf("--log-level %q: %w", level, err)
	}
	switch f := log.OutputFormat(format); f {
	case log.JSONFormat, log.TextFormat:
		if err := log.SetFormat(f); err != nil {
			return fmt.Errorf("--log-format %q: %w", format, err)
		}
	default:
		return fmt.Errorf("--log-format %q: want %s or %s", format, log.JSONFormat, log.TextFormat)
	}
	log.L.Logger.SetOutput(w)
	return nil
}

// logNotices writes one warning per key of the configuration file that the
// daemon ignores or does not act on.
func logNotices(ctx context.Context, path string, notices []config.Notice) {
	for _, n := range notices {
		l := log.G(ctx).WithField("config", path).WithField("key", n.Key)
		if n.Line > 0 {
			l = l.WithField("line", n.Line)
		}
		switch n.Kind {
		case config.UnknownKey:
			if n.Suggestion != "" {
				l = l.WithField("did_you_mean", n.Suggestion)
			}
			l.Warn("config: " + n.String())
		default:
			l.WithField("reason", n.Reason).Warn("config: " + n.String())
		}
	}
}

func serve(ctx context.Context, cfg *config.Config, f *flags) error {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("root", f.root))
	svc, err := service.New(ctx, cfg, f.root, fusehost.Command{
		GlobalArgs: hostArgs(f), Stdout: os.Stdout, Stderr: os.Stderr,
	})
	if err != nil {
		return err
	}
	// The socket accepts once the snapshots are restored: callers (and
	// tests) take an accepting socket for a ready daemon.
	l, err := service.Listen(ctx, f.address)
	if err != nil {
		svc.Abort(ctx)
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

// hostArgs are the global flags of the FUSE host the daemon starts: the
// daemon's own (the config path only when one was given: the host then
// reads the same file, or the same defaults).
func hostArgs(f *flags) []string {
	args := []string{"--root", f.root, "--log-level", f.logLevel, "--log-format", f.logFormat}
	if f.configSet {
		args = append(args, "--config", f.configPath)
	}
	return args
}

// fuseHost runs the FUSE host (started by the daemon, not by hand): the
// lazily loaded layers' FUSE sessions, until it is shut down, retired and
// empty, or signalled (SIGTERM, SIGINT: then it unmounts every layer).
func fuseHost(ctx context.Context, args []string, f *flags, stderr io.Writer) error {
	fset := flag.NewFlagSet("fuse-host", flag.ContinueOnError)
	fset.SetOutput(stderr)
	id := fset.String("id", "", "the host's id (default: derived from the executable)")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() > 0 {
		return fmt.Errorf("fuse-host takes no arguments, got %q", fset.Args())
	}
	if *id == "" {
		var err error
		if *id, err = fusehost.ExecutableID(); err != nil {
			return err
		}
	}
	// The host outlives whoever reads its stderr (journald, a log pipe):
	// a write to a closed pipe must fail, not kill it.
	signal.Ignore(syscall.SIGPIPE)
	if err := setupLogging(f.logLevel, f.logFormat, stderr); err != nil {
		return err
	}
	log.L = log.L.WithFields(log.Fields{"process": "fuse-host", "host_id": *id})
	ctx = log.WithLogger(ctx, log.L.WithField("root", f.root))
	log.G(ctx).WithField("version", version.Version).WithField("pid", os.Getpid()).Info("starting FUSE host")
	cfg, _, err := config.LoadFile(f.configPath, f.configSet)
	if err != nil {
		return err
	}
	if err := service.RunHost(ctx, cfg, f.root, *id); err != nil {
		log.G(ctx).WithError(err).Error("FUSE host failed")
		return err
	}
	log.G(ctx).Info("FUSE host stopped")
	return nil
}

// cleanup ends every FUSE host of --root and removes what they leave.
func cleanup(ctx context.Context, args []string, f *flags, stderr io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("cleanup takes no arguments, got %q", args)
	}
	if err := setupLogging(f.logLevel, f.logFormat, stderr); err != nil {
		return err
	}
	return service.Cleanup(ctx, f.root)
}

// configCommand handles `config default`, `config dump` and `config check`.
func configCommand(args []string, f *flags, stdout, stderr io.Writer) error {
	if args[0] != "config" || len(args) < 2 {
		return fmt.Errorf("unknown command %q (want: config default|dump|check)", args)
	}
	switch args[1] {
	case "default", "dump":
		if len(args) != 2 {
			return fmt.Errorf("config %s takes no arguments, got %q", args[1], args[2:])
		}
		if args[1] == "default" {
			return config.Default().Encode(stdout)
		}
		cfg, err := config.Load(f.configPath, f.configSet)
		if err != nil {
			return err
		}
		return cfg.Encode(stdout)
	case "check":
		return configCheck(args[2:], f, stdout, stderr)
	default:
		return fmt.Errorf("unknown config command %q (want: default, dump or check)", args[1])
	}
}

// configCheck validates a configuration file for CI: it prints one line per
// notice and fails on an invalid file, on unknown keys and, with --strict,
// on keys the daemon accepts but does not act on. FILE defaults to the
// --config path; the file must exist.
func configCheck(args []string, f *flags, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("config check", flag.ContinueOnError)
	fset.SetOutput(stderr)
	strict := fset.Bool("strict", false, "also fail on keys that are accepted but not acted on")
	if err := fset.Parse(args); err != nil {
		return err
	}
	path := f.configPath
	switch fset.NArg() {
	case 0:
	case 1:
		path = fset.Arg(0)
	default:
		return fmt.Errorf("config check takes at most one file, got %q", fset.Args())
	}
	_, notices, err := config.LoadFile(path, true)
	if err != nil {
		return err
	}
	failing := 0
	for _, n := range notices {
		fmt.Fprintf(stdout, "%s: %s\n", path, n)
		if n.Kind == config.UnknownKey || *strict {
			failing++
		}
	}
	if failing > 0 {
		return fmt.Errorf("config check %s: %d key(s) ignored or not acted on", path, failing)
	}
	fmt.Fprintf(stdout, "%s: OK\n", path)
	return nil
}
