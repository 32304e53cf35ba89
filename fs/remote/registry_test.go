package remote

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fakeRegistry is an in-process distribution registry with switches for the
// behaviours the client must cope with.
type fakeRegistry struct {
	srv *httptest.Server

	mu          sync.Mutex
	blobs       map[digest.Digest][]byte
	manifests   map[string]stored // by digest or tag
	referrers   map[digest.Digest][]ocispec.Descriptor
	ignoreRange bool            // answer ranges with 200 and the whole blob
	storage     *blobStorage    // when set, blob GETs redirect there
	user, pass  string          // when set, basic auth is required
	bearer      bool            // require a token from /token
	noAPI       bool            // no referrers API: 404
	serverSide  bool            // filter referrers by artifactType on the server
	lie         bool            // corrupt manifests and blobs
	hang        bool            // never answer
	stallBody   bool            // send half a blob, then nothing
	failNext    int             // answer this many requests with 503
	hits        map[string]int  // by kind: blobs, manifests, referrers
	requests    []*http.Request // every request received
	headers     []http.Header   // headers of every request
}

type stored struct {
	mediaType string
	body      []byte
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	r := &fakeRegistry{
		blobs:     map[digest.Digest][]byte{},
		manifests: map[string]stored{},
		referrers: map[digest.Digest][]ocispec.Descriptor{},
		hits:      map[string]int{},
	}
	r.srv = httptest.NewServer(r)
	t.Cleanup(r.srv.Close)
	return r
}

// host is the registry's host:port, to be used in refs.
func (r *fakeRegistry) host() string { return r.srv.Listener.Addr().String() }

func (r *fakeRegistry) ref(repo string) string { return r.host() + "/" + repo + ":latest" }

func (r *fakeRegistry) addBlob(b []byte) ocispec.Descriptor {
	d := digest.FromBytes(b)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blobs[d] = b
	return ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: int64(len(b))}
}

func (r *fakeRegistry) addManifest(tag, mediaType string, b []byte) digest.Digest {
	d := digest.FromBytes(b)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.manifests[d.String()] = stored{mediaType, b}
	if tag != "" {
		r.manifests[tag] = stored{mediaType, b}
	}
	return d
}

func (r *fakeRegistry) set(f func(r *fakeRegistry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *fakeRegistry) hitCount(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits[kind]
}

func (r *fakeRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	kind, name, ok := splitPath(req.URL.Path)
	r.mu.Lock()
	r.hits[kind]++
	r.requests = append(r.requests, req)
	r.headers = append(r.headers, req.Header.Clone())
	hang, fail := r.hang, r.failNext > 0
	if fail {
		r.failNext--
	}
	r.mu.Unlock()
	switch {
	case req.URL.Path == "/token":
		serveToken(w, req)
		return
	case hang:
		<-req.Context().Done()
		return
	case fail:
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	case !r.authorized(w, req):
		return
	case !ok:
		http.NotFound(w, req)
		return
	}
	switch kind {
	case "blobs":
		r.serveBlob(w, req, digest.Digest(name))
	case "manifests":
		r.serveManifest(w, name)
	case "referrers":
		r.serveReferrers(w, req, digest.Digest(name))
	}
}

// splitPath cuts /v2/<repo>/<kind>/<name>.
func splitPath(p string) (kind, name string, ok bool) {
	for _, k := range []string{"blobs", "manifests", "referrers"} {
		if i := strings.LastIndex(p, "/"+k+"/"); i > len("/v2") && strings.HasPrefix(p, "/v2/") {
			return k, p[i+len(k)+2:], true
		}
	}
	return "other", "", false
}

func (r *fakeRegistry) authorized(w http.ResponseWriter, req *http.Request) bool {
	r.mu.Lock()
	user, pass, bearer := r.user, r.pass, r.bearer
	r.mu.Unlock()
	if bearer {
		if req.Header.Get("Authorization") == "Bearer tok-repository:app:pull" {
			return true
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake"`, r.srv.URL))
		w.WriteHeader(http.StatusUnauthorized)
		return false
	}
	if user == "" {
		return true
	}
	if u, p, ok := req.BasicAuth(); ok && u == user && p == pass {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
	w.WriteHeader(http.StatusUnauthorized)
	fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
	return false
}

// serveToken hands out a token naming the requested scope.
func serveToken(w http.ResponseWriter, req *http.Request) {
	if req.URL.Query().Get("service") != "fake" {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"token": "tok-%s"}`, req.URL.Query().Get("scope"))
}

func (r *fakeRegistry) serveBlob(w http.ResponseWriter, req *http.Request, d digest.Digest) {
	r.mu.Lock()
	b, ok := r.blobs[d]
	storage, ignore, lie, stall := r.storage, r.ignoreRange, r.lie, r.stallBody
	r.mu.Unlock()
	switch {
	case ok && stall:
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		<-req.Context().Done()
	case !ok:
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
	case storage != nil:
		http.Redirect(w, req, storage.srv.URL+"/store/"+d.Encoded()+"?sig=s3cr3t", http.StatusTemporaryRedirect)
	case lie:
		serveRange(w, req, corrupt(b), ignore)
	default:
		serveRange(w, req, b, ignore)
	}
}

func (r *fakeRegistry) serveManifest(w http.ResponseWriter, name string) {
	r.mu.Lock()
	m, ok := r.manifests[name]
	lie := r.lie
	r.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
		return
	}
	body := m.body
	if lie {
		body = corrupt(body)
	}
	if m.mediaType != "" {
		w.Header().Set("Content-Type", m.mediaType)
	}
	_, _ = w.Write(body)
}

func (r *fakeRegistry) serveReferrers(w http.ResponseWriter, req *http.Request, subject digest.Digest) {
	r.mu.Lock()
	noAPI, serverSide := r.noAPI, r.serverSide
	descs := append([]ocispec.Descriptor(nil), r.referrers[subject]...)
	r.mu.Unlock()
	if noAPI {
		http.NotFound(w, req)
		return
	}
	if at := req.URL.Query().Get("artifactType"); serverSide && at != "" {
		var kept []ocispec.Descriptor
		for _, d := range descs {
			if d.ArtifactType == at {
				kept = append(kept, d)
			}
		}
		descs = kept
	}
	w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
	_, _ = w.Write(mustJSON(indexOf(descs)))
}

// serveRange answers a single "bytes=a-b" range with 206, or the whole blob
// with 200 when there is no range or ignore is set.
func serveRange(w http.ResponseWriter, req *http.Request, b []byte, ignore bool) {
	rng := req.Header.Get("Range")
	if rng == "" || ignore {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
		return
	}
	first, last, ok := parseRange(rng)
	if !ok || first >= int64(len(b)) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(b)))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	last = min(last, int64(len(b))-1)
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(b)))
	w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
	w.WriteHeader(http.StatusPartialContent)
	_, _ = w.Write(b[first : last+1])
}

func parseRange(v string) (first, last int64, ok bool) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	a, z, ok2 := strings.Cut(spec, "-")
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(z, 10, 64)
	return first, last, ok && ok2 && err1 == nil && err2 == nil && first <= last
}

func corrupt(b []byte) []byte {
	c := append([]byte(nil), b...)
	if len(c) > 0 {
		c[0] ^= 0xff
	}
	return c
}

// blobStorage stands for the object store a registry redirects blob GETs
// to: it serves /store/<hex> with ranges, counts hits, and can expire.
type blobStorage struct {
	srv      *httptest.Server
	reg      *fakeRegistry
	mu       sync.Mutex
	hits     int
	expired  bool
	sawAuth  bool
	sawQuery url.Values
}

func newBlobStorage(t *testing.T, reg *fakeRegistry) *blobStorage {
	s := &blobStorage{reg: reg}
	s.srv = httptest.NewServer(s)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *blobStorage) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	s.mu.Lock()
	s.hits++
	s.sawAuth = s.sawAuth || req.Header.Get("Authorization") != ""
	s.sawQuery = req.URL.Query()
	expired := s.expired
	s.mu.Unlock()
	hex, _ := strings.CutPrefix(req.URL.Path, "/store/")
	s.reg.mu.Lock()
	b, ok := s.reg.blobs[digest.NewDigestFromEncoded(digest.SHA256, hex)]
	s.reg.mu.Unlock()
	if expired || !ok {
		http.Error(w, "<Error><Code>AccessDenied</Code></Error>", http.StatusForbidden)
		return
	}
	serveRange(w, req, b, false)
}

func (s *blobStorage) hitCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits
}
