// Package ctdcontent reads SOCI indices and zTOCs from containerd's content
// store ([content_store] type = "containerd"), where `soci create` leaves
// them: an index.ContentSource reached with containerd's client over
// [content_store] containerd_address. It reads in the containerd namespace
// of the request (the one containerd's snapshot call came in, which the
// FUSE host protocol carries), as the reference does; [content_store]
// namespace plays no part. It only bounds what it reads: the index store
// checks size and digest and validates the bytes like a registry's.
//
// It also writes, for parallel pull with discard_unpacked_layers = false,
// the layer blobs it downloaded and checked (WriteBlob), as the reference
// keeps them.
package ctdcontent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/leases"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// Store is containerd's content store at one address. The connection is
// made on first use and again after a failure, so the FUSE host starts
// without containerd. It is safe for concurrent use.
type Store struct {
	address string
	conn    *grpc.ClientConn
	cs      content.Store
	leases  leases.Manager
}

// New returns the content store of the containerd listening on address (a
// socket path; a "unix://" prefix is removed). It does not connect yet.
func New(address string) (*Store, error) {
	address = strings.TrimPrefix(address, "unix://")
	if address == "" {
		return nil, errors.New("containerd content store: no address")
	}
	// containerd's own dialer waits for a missing socket to appear (up
	// to its client's 10 s timeout); a mount must not wait that long for
	// a content store that is not there, so dial the socket once.
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", address)
	}
	// containerd's content proxy over a connection of our own, not
	// containerd.New: that links every service client (+2.3 MB).
	conn, err := grpc.NewClient("passthrough:///"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: connectTimeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("containerd content store at %s: %w", address, err)
	}
	return &Store{address: address, conn: conn, cs: proxy.NewContentStore(conn),
		leases: leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))}, nil
}

// BlobLease is how long the lease WriteBlob takes on a layer blob lasts:
// long enough for the pull that asked for it to record its image.
const BlobLease = 24 * time.Hour

// connectTimeout bounds one attempt to connect to containerd.
const connectTimeout = 5 * time.Second

// Close closes the connection.
func (s *Store) Close() error {
	return s.conn.Close()
}

// ReadBlob returns blob d of the request's namespace, refusing one larger
// than max before reading it. No namespace in ctx, or no such blob, is an
// error wrapping errdefs.ErrNotFound.
func (s *Store) ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("read from containerd's content store: digest %q: %w", d, err)
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok || ns == "" {
		return nil, fmt.Errorf("read %s from containerd's content store: the request names no containerd namespace: %w", d, errdefs.ErrNotFound)
	}
	ra, err := s.cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
	if err != nil {
		return nil, fmt.Errorf("read %s from containerd's content store at %s (namespace %s): %w", d, s.address, ns, err)
	}
	defer ra.Close()
	size := ra.Size()
	if size < 0 || size > max {
		return nil, fmt.Errorf("blob %s in containerd's content store (namespace %s) has %d bytes, more than %d", d, ns, size, max)
	}
	data := make([]byte, size)
	n, err := ra.ReadAt(data, 0)
	if n == len(data) {
		return data, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("read %s from containerd's content store (namespace %s): %d of %d bytes: %w", d, ns, n, size, err)
}

// WriteBlob stores the blob desc, read from r, in containerd's content store
// in the request's namespace; containerd checks its size and digest at
// commit. A blob already there is left as it is.
func (s *Store) WriteBlob(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return fmt.Errorf("store %s in containerd's content store: the request names no containerd namespace: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	// containerd's garbage collector deletes content nothing references:
	// until the pull that asked for the layer records its image, only a
	// lease keeps the blob. Ours expires on its own (a pull that is
	// abandoned leaves nothing for ever).
	l, err := s.leases.Create(ctx, leases.WithRandomID(), leases.WithExpiration(BlobLease),
		leases.WithLabel("soci.parallel-pull.layer", desc.Digest.String()))
	if err != nil {
		return fmt.Errorf("store %s in containerd's content store at %s (namespace %s): lease: %w", desc.Digest, s.address, ns, err)
	}
	err = content.WriteBlob(leases.WithLease(ctx, l.ID), s.cs, "soci-parallel-pull-"+desc.Digest.String(), r, desc)
	if err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("store %s in containerd's content store at %s (namespace %s): %w", desc.Digest, s.address, ns, err)
	}
	return nil
}
