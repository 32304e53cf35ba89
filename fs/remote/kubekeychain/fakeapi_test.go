package kubekeychain

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// fakeAPI is an API server that serves the part of the Kubernetes API
// client-go's informers use for secrets in all namespaces: list
// (GET /api/v1/secrets) and watch (?watch=true), with the type= field
// selector, resource versions, and, when watchList is set, streaming lists
// (sendInitialEvents=true, ended by a bookmark). It is served over TLS and
// asks for a bearer token, as a kubeconfig describes them.
type fakeAPI struct {
	t      *testing.T
	srv    *httptest.Server
	token  string
	stopCh chan struct{}

	mu             sync.Mutex
	rv             int
	secrets        map[string]*corev1.Secret // by namespace/name
	log            []fakeEvent
	changed        chan struct{} // closed and replaced on every change
	watchList      bool          // serve sendInitialEvents=true
	ignoreSelector bool          // serve every secret whatever the field selector
	refuse         int           // answer every request with this status
	requests       []string
}

type fakeEvent struct {
	rv  int
	typ string
	obj *corev1.Secret
}

func newFakeAPI(t *testing.T, watchList bool) *fakeAPI {
	f := &fakeAPI{
		t: t, token: "kube-token", stopCh: make(chan struct{}),
		secrets: map[string]*corev1.Secret{}, changed: make(chan struct{}), watchList: watchList, rv: 100,
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.stopCh)
		f.srv.Close()
	})
	return f
}

// kubeconfig writes a kubeconfig for the server to dir and returns its
// path.
func (f *fakeAPI) kubeconfig(dir string) string {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: snapshotter
  user:
    token: %s
contexts:
- name: fake
  context:
    cluster: fake
    user: snapshotter
current-context: fake
`, f.srv.URL, base64.StdEncoding.EncodeToString(ca), f.token)
	p := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// put adds or replaces a secret.
func (f *fakeAPI) put(s *corev1.Secret) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := s.Namespace + "/" + s.Name
	typ := "ADDED"
	if _, ok := f.secrets[key]; ok {
		typ = "MODIFIED"
	}
	f.rv++
	s = s.DeepCopy()
	s.ResourceVersion = strconv.Itoa(f.rv)
	f.secrets[key] = s
	f.record(typ, s)
}

// del removes a secret.
func (f *fakeAPI) del(namespace, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := namespace + "/" + name
	s, ok := f.secrets[key]
	if !ok {
		return
	}
	delete(f.secrets, key)
	f.rv++
	s = s.DeepCopy()
	s.ResourceVersion = strconv.Itoa(f.rv)
	f.record("DELETED", s)
}

func (f *fakeAPI) record(typ string, s *corev1.Secret) {
	f.log = append(f.log, fakeEvent{rv: f.rv, typ: typ, obj: s})
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeAPI) setRefuse(status int) {
	f.mu.Lock()
	f.refuse = status
	f.mu.Unlock()
}

// seen returns the requests served so far, as "path?query".
func (f *fakeAPI) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *fakeAPI) matches(s *corev1.Secret, selector string) bool {
	if f.ignoreSelector || selector == "" {
		return true
	}
	want, ok := strings.CutPrefix(selector, "type=")
	return ok && string(s.Type) == want
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.URL.Path+"?"+r.URL.RawQuery)
	refuse := f.refuse
	f.mu.Unlock()
	switch {
	case r.Header.Get("Authorization") != "Bearer "+f.token:
		f.status(w, http.StatusUnauthorized, "Unauthorized", "no or wrong token")
	case refuse != 0:
		f.status(w, refuse, "Forbidden", `secrets is forbidden: User "snapshotter" cannot list resource "secrets" in API group "" at the cluster scope`)
	case r.Method != http.MethodGet || r.URL.Path != "/api/v1/secrets":
		f.status(w, http.StatusNotFound, "NotFound", "not served by the fake")
	case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
		f.watch(w, r)
	default:
		f.list(w, r)
	}
}

func (f *fakeAPI) status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: metav1.StatusReason(reason), Code: int32(code),
	})
}

func (f *fakeAPI) list(w http.ResponseWriter, r *http.Request) {
	selector := r.URL.Query().Get("fieldSelector")
	f.mu.Lock()
	out := corev1.SecretList{
		TypeMeta: metav1.TypeMeta{Kind: "SecretList", APIVersion: "v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: strconv.Itoa(f.rv)},
	}
	for _, s := range f.secrets {
		if f.matches(s, selector) {
			out.Items = append(out.Items, *s)
		}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&out)
}

func (f *fakeAPI) watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	selector := q.Get("fieldSelector")
	initial := q.Get("sendInitialEvents") == "true"
	if initial && !f.watchList {
		// As an API server without streaming lists answers.
		f.status(w, http.StatusUnprocessableEntity, "Invalid", "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		f.t.Error("fake API: response writer cannot flush")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ string, s *corev1.Secret) bool {
		s = s.DeepCopy()
		s.TypeMeta = metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"}
		raw, err := json.Marshal(s)
		if err != nil {
			f.t.Errorf("fake API: %v", err)
			return false
		}
		if enc.Encode(&metav1.WatchEvent{Type: typ, Object: runtime.RawExtension{Raw: raw}}) != nil {
			return false
		}
		fl.Flush()
		return true
	}

	f.mu.Lock()
	from, _ := strconv.Atoi(q.Get("resourceVersion"))
	if initial || from == 0 {
		from = f.rv
	}
	var first []*corev1.Secret
	if initial {
		for _, s := range f.secrets {
			if f.matches(s, selector) {
				first = append(first, s)
			}
		}
	}
	f.mu.Unlock()
	for _, s := range first {
		if !send("ADDED", s) {
			return
		}
	}
	if initial {
		end := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			ResourceVersion: strconv.Itoa(from),
			Annotations:     map[string]string{metav1.InitialEventsAnnotationKey: "true"},
		}}
		if !send("BOOKMARK", end) {
			return
		}
	}
	for {
		f.mu.Lock()
		var next []fakeEvent
		for _, e := range f.log {
			if e.rv > from && f.matches(e.obj, selector) {
				next = append(next, e)
			}
		}
		if n := len(f.log); n > 0 {
			from = max(from, f.log[n-1].rv)
		}
		changed := f.changed
		f.mu.Unlock()
		for _, e := range next {
			if !send(e.typ, e.obj) {
				return
			}
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-f.stopCh:
			return
		}
	}
}

// pullSecret returns a secret of type t in namespace/name holding data
// under the type's key.
func pullSecret(namespace, name string, t corev1.SecretType, data string) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Type:       t,
	}
	if key := dataKey(t); key != "" {
		s.Data = map[string][]byte{key: []byte(data)}
	} else {
		s.Data = map[string][]byte{"password": []byte(data)}
	}
	return s
}

// dockerConfigJSON returns a .dockerconfigjson giving user:pass for each
// registry key.
func dockerConfigJSON(user, pass string, keys ...string) string {
	auths := map[string]map[string]string{}
	for _, k := range keys {
		auths[k] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	}
	b, _ := json.Marshal(map[string]any{"auths": auths})
	return string(b)
}
