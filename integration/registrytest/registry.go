// Package registrytest is an in-memory stand-in for the distribution
// registry (v3) for unit tests of code that pushes and discovers images:
// blob uploads and reads, manifests by tag or digest with the registry's
// reference checks, and, like distribution v3, no referrers API.
package registrytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Registry is the part of the distribution registry (v3) that pushing
// and discovering SOCI images needs: blob uploads and reads, manifest PUT,
// HEAD and GET by tag or digest, with the registry's checks that a manifest's
// config and layers, or an index's manifests, exist. Like distribution v3 it
// has no referrers API: /v2/<name>/referrers/<digest> is 404 page not found.
// Blobs are shared by all repositories.
type Registry struct {
	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	manifests map[string]Manifest // "<repo>@<digest>" or "<repo>:<tag>"
	uploads   map[string][]byte
	nextID    int
	requests  []string // "METHOD path"
}

// Requests returns every request served so far as "METHOD path".
func (f *Registry) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// Manifest is a stored manifest or index.
type Manifest struct {
	MediaType string
	Data      []byte
}

// New returns an empty registry; serve it with httptest.NewServer.
func New() *Registry {
	return &Registry{
		blobs:     map[digest.Digest][]byte{},
		manifests: map[string]Manifest{},
		uploads:   map[string][]byte{},
	}
}

func (f *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if p == "" || p == r.URL.Path {
		w.WriteHeader(http.StatusOK)
		return
	}
	if i := strings.LastIndex(p, "/blobs/uploads/"); i > 0 {
		f.upload(w, r, p[:i], strings.TrimPrefix(p[i:], "/blobs/uploads/"))
	} else if i := strings.LastIndex(p, "/blobs/"); i > 0 {
		b, ok := f.blobs[digest.Digest(p[i+len("/blobs/"):])]
		f.serve(w, r, "application/octet-stream", b, ok)
	} else if i := strings.LastIndex(p, "/manifests/"); i > 0 {
		f.manifest(w, r, p[:i], p[i+len("/manifests/"):])
	} else {
		http.NotFound(w, r)
	}
}

func (f *Registry) upload(w http.ResponseWriter, r *http.Request, repo, id string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case r.Method == http.MethodPost && id == "":
		f.nextID++
		id = fmt.Sprint(f.nextID)
		f.uploads[id] = nil
		w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/"+id)
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodPatch:
		f.uploads[id] = append(f.uploads[id], body...)
		w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/"+id)
		w.Header().Set("Range", fmt.Sprintf("0-%d", len(f.uploads[id])-1))
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodPut:
		data, ok := f.uploads[id]
		if !ok {
			http.Error(w, "unknown upload", http.StatusNotFound)
			return
		}
		data = append(data, body...)
		delete(f.uploads, id)
		dgst := digest.Digest(r.URL.Query().Get("digest"))
		if dgst != digest.FromBytes(data) {
			http.Error(w, "digest mismatch", http.StatusBadRequest)
			return
		}
		f.blobs[dgst] = data
		w.Header().Set("Docker-Content-Digest", dgst.String())
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+dgst.String())
		w.WriteHeader(http.StatusCreated)
	default:
		http.Error(w, "bad upload request", http.StatusMethodNotAllowed)
	}
}

func (f *Registry) manifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	key := repo + ":" + ref
	if _, err := digest.Parse(ref); err == nil {
		key = repo + "@" + ref
	}
	if r.Method != http.MethodPut {
		m, ok := f.manifests[key]
		f.serve(w, r, m.MediaType, m.Data, ok)
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := f.verify(repo, data); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	dgst := digest.FromBytes(data)
	if key != repo+":"+ref && dgst.String() != ref {
		http.Error(w, "digest mismatch", http.StatusBadRequest)
		return
	}
	m := Manifest{MediaType: r.Header.Get("Content-Type"), Data: data}
	f.manifests[repo+"@"+dgst.String()] = m
	f.manifests[key] = m
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+dgst.String())
	w.WriteHeader(http.StatusCreated)
}

// verify checks what the registry checks on a manifest PUT: the blobs a
// manifest names and the manifests an index names exist.
func (f *Registry) verify(repo string, data []byte) error {
	var doc struct {
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return err
	}
	blobs := doc.Layers
	if doc.Config != nil {
		blobs = append(blobs, *doc.Config)
	}
	for _, d := range blobs {
		if _, ok := f.blobs[d.Digest]; !ok {
			return fmt.Errorf("blob unknown: %s", d.Digest)
		}
	}
	for _, d := range doc.Manifests {
		if _, ok := f.manifests[repo+"@"+d.Digest.String()]; !ok {
			return fmt.Errorf("manifest unknown: %s", d.Digest)
		}
	}
	return nil
}

func (f *Registry) serve(w http.ResponseWriter, r *http.Request, mediaType string, data []byte, ok bool) {
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", digest.FromBytes(data).String())
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

// Get returns a stored manifest by "<repo>:<tag>" or "<repo>@<digest>".
func (f *Registry) Get(key string) (Manifest, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.manifests[key]
	return m, ok
}
