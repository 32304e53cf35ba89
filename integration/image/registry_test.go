package image

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// fakeRegistry is the part of the OCI distribution API that pushing and
// pulling an image needs: blob uploads (POST, PATCH, PUT), blob HEAD/GET,
// manifest PUT/HEAD/GET by tag or digest. Blobs are shared by all repositories.
type fakeRegistry struct {
	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	manifests map[string]fakeManifest // "<repo>@<digest>" or "<repo>:<tag>"
	uploads   map[string][]byte
	nextID    int
}

type fakeManifest struct {
	mediaType string
	data      []byte
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{
		blobs:     map[digest.Digest][]byte{},
		manifests: map[string]fakeManifest{},
		uploads:   map[string][]byte{},
	}
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
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

func (f *fakeRegistry) upload(w http.ResponseWriter, r *http.Request, repo, id string) {
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

func (f *fakeRegistry) manifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	key := repo + ":" + ref
	if _, err := digest.Parse(ref); err == nil {
		key = repo + "@" + ref
	}
	if r.Method != http.MethodPut {
		m, ok := f.manifests[key]
		f.serve(w, r, m.mediaType, m.data, ok)
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	dgst := digest.FromBytes(data)
	m := fakeManifest{mediaType: r.Header.Get("Content-Type"), data: data}
	f.manifests[repo+"@"+dgst.String()] = m
	f.manifests[key] = m
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+dgst.String())
	w.WriteHeader(http.StatusCreated)
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request, mediaType string, data []byte, ok bool) {
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
