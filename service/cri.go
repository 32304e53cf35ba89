package service

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/containerd/log"
	distribution "github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/fastsoci/soci-snapshotter/fusehost"
)

// criMaxMsgSize bounds messages to and from the backing image service, as
// containerd's own clients do (ListImages answers can be large).
const criMaxMsgSize = 16 << 20

// criProxy is the [cri_keychain] ImageService: kubelet calls it (its
// --image-service-endpoint names the daemon's socket), every call is
// forwarded to containerd's CRI image service, and the AuthConfig of a
// PullImage is kept in memory for that image's registry host, and sent
// to the FUSE host with each mount of that image's layers, so that the lazy
// filesystem's registry fetches (index, zTOC, spans) authenticate as the
// pull did. Credentials are never logged and lost on restart.
type criProxy struct {
	runtime.UnimplementedImageServiceServer

	conn    *grpc.ClientConn
	backend runtime.ImageServiceClient

	mu   sync.Mutex
	seq  uint64
	refs map[string]criAuth // by normalized image reference
}

// criAuth is the credentials of one pull.
type criAuth struct {
	host         string // registry host of the image
	user, secret string
	seq          uint64 // larger: pulled later
}

var _ runtime.ImageServiceServer = (*criProxy)(nil)

// newCRIProxy returns a proxy for the image service at address (a unix
// socket path, or a unix:// address). The connection is made on first use,
// so containerd may start after the daemon.
func newCRIProxy(address string) (*criProxy, error) {
	target := address
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(criMaxMsgSize), grpc.MaxCallSendMsgSize(criMaxMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("cri_keychain: image service %s: %w", address, err)
	}
	return &criProxy{conn: conn, backend: runtime.NewImageServiceClient(conn), refs: map[string]criAuth{}}, nil
}

// close closes the connection to the backing image service.
func (p *criProxy) close() error {
	if p == nil {
		return nil
	}
	return p.conn.Close()
}

// credentials is a remote Credentials source: the credentials of the latest
// pull of an image from host still recorded, or none.
func (p *criProxy) credentials(host string) (string, string, error) {
	host = fusehost.HostKey(host)
	p.mu.Lock()
	defer p.mu.Unlock()
	var best criAuth
	for _, a := range p.refs {
		if a.host == host && a.seq > best.seq {
			best = a
		}
	}
	return best.user, best.secret, nil
}

// PullImage records the request's credentials, then forwards it.
func (p *criProxy) PullImage(ctx context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	ref := r.GetImage().GetImage()
	named, err := distribution.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	host := fusehost.HostKey(distribution.Domain(named))
	user, secret, err := criParseAuth(r.GetAuth(), host)
	if err != nil {
		// The message names neither secret.
		return nil, fmt.Errorf("credentials of pull of %s: %w", named, err)
	}
	p.mu.Lock()
	if user != "" || secret != "" {
		p.seq++
		p.refs[named.String()] = criAuth{host: host, user: user, secret: secret, seq: p.seq}
	} else {
		// An anonymous pull: forget older credentials of this reference.
		delete(p.refs, named.String())
	}
	p.mu.Unlock()
	log.G(ctx).WithField("image", named.String()).WithField("with_credentials", user != "" || secret != "").
		Debug("cri: pulling image")
	return p.backend.PullImage(ctx, r)
}

// RemoveImage forgets the credentials of a reference, then forwards it.
// An image ID (kubelet's image GC) matches no recorded reference.
func (p *criProxy) RemoveImage(ctx context.Context, r *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	if named, err := distribution.ParseDockerRef(r.GetImage().GetImage()); err == nil {
		p.mu.Lock()
		delete(p.refs, named.String())
		p.mu.Unlock()
	}
	return p.backend.RemoveImage(ctx, r)
}

func (p *criProxy) ListImages(ctx context.Context, r *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return p.backend.ListImages(ctx, r)
}

func (p *criProxy) ImageStatus(ctx context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return p.backend.ImageStatus(ctx, r)
}

func (p *criProxy) ImageFsInfo(ctx context.Context, r *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return p.backend.ImageFsInfo(ctx, r)
}

// criParseAuth returns the user and secret of a CRI AuthConfig, as
// containerd's CRI plugin reads it: username and password, else the
// identity token (a refresh token, with an empty user), else the base64
// "user:password" auth. An AuthConfig whose server_address names another
// host gives none. A registry token (a bearer token to send as is) is not
// supported, as in containerd. Errors never include secrets.
func criParseAuth(a *runtime.AuthConfig, host string) (string, string, error) {
	if a == nil {
		return "", "", nil
	}
	if sa := a.GetServerAddress(); sa != "" {
		h := sa
		if strings.Contains(sa, "://") {
			u, err := url.Parse(sa)
			if err != nil {
				return "", "", errors.New("invalid server_address")
			}
			h = u.Host
		} else {
			h, _, _ = strings.Cut(sa, "/")
		}
		if fusehost.HostKey(h) != host {
			return "", "", nil
		}
	}
	switch {
	case a.GetUsername() != "":
		return a.GetUsername(), a.GetPassword(), nil
	case a.GetIdentityToken() != "":
		return "", a.GetIdentityToken(), nil
	case a.GetAuth() != "":
		dec, err := base64.StdEncoding.DecodeString(a.GetAuth())
		if err != nil {
			return "", "", errors.New("auth is not base64")
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return "", "", errors.New("decoded auth is not user:password")
		}
		return user, strings.Trim(pass, "\x00"), nil
	}
	return "", "", nil
}
