package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/urfave/cli/v2"
)

// Global flags, given before the subcommand.
const (
	addressFlag      = "address"
	namespaceFlag    = "namespace"
	timeoutFlag      = "timeout"
	debugFlag        = "debug"
	contentStoreFlag = "content-store"
	rootFlag         = "root"
	versionFlag      = "version"
)

const (
	defaultAddress = "/run/containerd/containerd.sock"
	defaultRoot    = "/var/lib/soci-snapshotter-grpc"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: addressFlag, Aliases: []string{"a"}, Usage: "address of containerd's gRPC socket",
			Value: defaultAddress, EnvVars: []string{"CONTAINERD_ADDRESS"}},
		&cli.StringFlag{Name: namespaceFlag, Aliases: []string{"n"}, Usage: "containerd namespace",
			Value: namespaces.Default, EnvVars: []string{namespaces.NamespaceEnvVar}},
		&cli.DurationFlag{Name: timeoutFlag, Usage: "timeout for the whole command (0: none)"},
		&cli.BoolFlag{Name: debugFlag, Usage: "debug logging on stderr"},
		&cli.StringFlag{Name: contentStoreFlag, Usage: "where SOCI artifacts are stored: containerd or soci (a local OCI store under --root)",
			Value: string(store.ContainerdContentStoreType)},
		&cli.StringFlag{Name: rootFlag, Usage: "root directory of the snapshotter (artifact database, soci content store)",
			Value: defaultRoot, EnvVars: []string{"SOCI_ROOT"}},
		&cli.BoolFlag{Name: versionFlag, Aliases: []string{"v"}, Usage: "print the version"},
	}
}

// session is what every command needs: a namespaced context bounded by
// --timeout, a containerd client, the artifact store and database.
type session struct {
	client *containerd.Client
	store  store.Store
	db     *soci.ArtifactsDb
	root   string
}

// open connects to containerd and opens the artifact store and database.
// The returned context carries the namespace and timeout; close releases all.
func open(ctx context.Context, c *cli.Context) (context.Context, *session, func(), error) {
	if c.Bool(debugFlag) {
		_ = log.SetLevel("debug")
	} else {
		_ = log.SetLevel("warn")
	}
	ctx = namespaces.WithNamespace(ctx, c.String(namespaceFlag))
	cancel := func() {}
	if d := c.Duration(timeoutFlag); d > 0 {
		ctx, cancel = context.WithTimeout(ctx, d)
	}
	address := strings.TrimPrefix(c.String(addressFlag), "unix://")
	client, err := containerd.New(address)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	s := &session{client: client, root: c.String(rootFlag)}
	closeAll := func() {
		client.Close()
		cancel()
	}
	kind, err := store.CanonicalizeContentStoreType(store.ContentStoreType(c.String(contentStoreFlag)))
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	s.store, err = store.NewContentStore(store.WithType(kind), store.WithContainerdAddress(address),
		store.WithSnapshotterRoot(s.root))
	if err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("open %s content store: %w", kind, err)
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("create root %s: %w", s.root, err)
	}
	s.db, err = soci.NewDB(soci.ArtifactsDbPath(s.root))
	if err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("open artifact database under %s: %w", s.root, err)
	}
	return ctx, s, closeAll, nil
}
