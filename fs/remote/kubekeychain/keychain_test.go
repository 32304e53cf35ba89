package kubekeychain

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
)

// waitLimit bounds every wait of these tests for the keychain's goroutines;
// a test that reaches it has failed.
const waitLimit = 20 * time.Second

// recorder keeps the log entries written to it and wakes waiters.
type recorder struct {
	mu      sync.Mutex
	entries []logrus.Entry
	changed chan struct{}
}

func (r *recorder) Levels() []logrus.Level { return logrus.AllLevels }

func (r *recorder) Fire(e *logrus.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, *e)
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

// warnings returns the warning lines so far, each as its message followed
// by its fields.
func (r *recorder) warnings() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.entries {
		if e.Level > logrus.WarnLevel {
			continue
		}
		line := e.Message
		for k, v := range e.Data {
			line += " " + k + "=" + toString(v)
		}
		out = append(out, line)
	}
	return out
}

func toString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case error:
		return v.Error()
	}
	return ""
}

// waitWarning waits for a warning containing every part.
func (r *recorder) waitWarning(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		for _, w := range r.warnings() {
			if containsAll(w, parts) {
				return w
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no warning with %q; warnings: %q", parts, r.warnings())
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// start starts a keychain logging to a recorder, stopped at the end of
// the test (before the fake API server closes).
func start(t *testing.T, opts Options) (*Keychain, *recorder) {
	t.Helper()
	rec := &recorder{changed: make(chan struct{})}
	logger := logrus.New()
	logger.SetOutput(discard{})
	logger.SetLevel(logrus.DebugLevel)
	logger.AddHook(rec)
	ctx, cancel := context.WithCancel(log.WithLogger(context.Background(), logrus.NewEntry(logger)))
	k := Start(ctx, opts)
	t.Cleanup(func() {
		cancel()
		select {
		case <-k.Done():
		case <-time.After(waitLimit):
			t.Error("keychain did not stop")
		}
	})
	return k, rec
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func waitSynced(t *testing.T, k *Keychain) {
	t.Helper()
	select {
	case <-k.Synced():
	case <-time.After(waitLimit):
		t.Fatal("keychain did not sync")
	}
}

// waitCreds waits until host's credentials are user and secret.
func waitCreds(t *testing.T, k *Keychain, host, user, secret string) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		ch := k.changes()
		u, s, err := k.Credentials(host)
		if err != nil {
			t.Fatalf("Credentials(%s): %v", host, err)
		}
		if u == user && s == secret {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("Credentials(%s) = %q, %q; want %q, %q", host, u, s, user, secret)
		}
	}
}

func checkCreds(t *testing.T, k *Keychain, host, user, secret string) {
	t.Helper()
	u, s, err := k.Credentials(host)
	if err != nil || u != user || s != secret {
		t.Errorf("Credentials(%s) = %q, %q, %v; want %q, %q", host, u, s, err, user, secret)
	}
}

// TestKeychainFollowsSecrets: through a kubeconfig, over TLS with a token,
// the keychain lists both kinds of pull secrets in all namespaces with a
// type field selector and follows their changes (update, a second secret
// for a host, delete, a secret made malformed), with the API server
// streaming lists (watch-list, client-go's default) or not (list, then
// watch).
func TestKeychainFollowsSecrets(t *testing.T) {
	for _, watchList := range []bool{true, false} {
		name := "list-then-watch"
		if watchList {
			name = "watch-list"
		}
		t.Run(name, func(t *testing.T) {
			f := newFakeAPI(t, watchList)
			f.put(pullSecret("a", "pull", corev1.SecretTypeDockerConfigJson,
				dockerConfigJSON("alice", "pw1", "https://index.docker.io/v1/", "reg.example:5000")))
			f.put(pullSecret("b", "legacy", corev1.SecretTypeDockercfg,
				`{"https://legacy.example/v1/": {"auth": "`+base64.StdEncoding.EncodeToString([]byte("bob:pw:2"))+`"}}`))
			f.put(pullSecret("c", "opaque", corev1.SecretTypeOpaque, "not a docker config"))

			k, rec := start(t, Options{KubeconfigPath: f.kubeconfig(t.TempDir())})
			waitSynced(t, k)
			checkCreds(t, k, "registry-1.docker.io", "alice", "pw1")
			checkCreds(t, k, "docker.io", "alice", "pw1")
			checkCreds(t, k, "REG.example:5000", "alice", "pw1")
			checkCreds(t, k, "reg.example", "", "")
			checkCreds(t, k, "legacy.example", "bob", "pw:2")
			checkCreds(t, k, "other.example", "", "")

			// A rotated password applies.
			f.put(pullSecret("a", "pull", corev1.SecretTypeDockerConfigJson,
				dockerConfigJSON("alice", "pw3", "https://index.docker.io/v1/", "reg.example:5000")))
			waitCreds(t, k, "reg.example:5000", "alice", "pw3")
			// A second secret for the host: the first by namespace/name
			// answers, whatever the order they came in.
			f.put(pullSecret("z", "late", corev1.SecretTypeDockerConfigJson, dockerConfigJSON("zed", "pwz", "reg.example:5000")))
			f.put(pullSecret("z", "marker", corev1.SecretTypeDockerConfigJson, dockerConfigJSON("m", "m", "marker.example")))
			waitCreds(t, k, "marker.example", "m", "m")
			checkCreds(t, k, "reg.example:5000", "alice", "pw3")
			// Deleted: the other secret answers.
			f.del("a", "pull")
			waitCreds(t, k, "reg.example:5000", "zed", "pwz")
			checkCreds(t, k, "docker.io", "", "")
			// Made malformed: it answers nothing, with a warning naming it
			// and not quoting it.
			f.put(pullSecret("b", "legacy", corev1.SecretTypeDockercfg, `{"legacy.example": {"auth": "c2VjcmV0`))
			waitCreds(t, k, "legacy.example", "", "")
			w := rec.waitWarning(t, "skipped", "b/legacy")
			if strings.Contains(w, "c2VjcmV0") {
				t.Errorf("warning quotes the secret: %s", w)
			}

			var lists, watches, streamed int
			for _, r := range f.seen() {
				u, err := url.Parse(r)
				if err != nil {
					t.Fatal(err)
				}
				q := u.Query()
				sel := q.Get("fieldSelector")
				if sel != "type=kubernetes.io/dockerconfigjson" && sel != "type=kubernetes.io/dockercfg" {
					t.Errorf("request %s: field selector %q, want one secret type", r, sel)
				}
				switch {
				case q.Get("watch") == "":
					lists++
				case q.Get("sendInitialEvents") == "true":
					streamed++
				default:
					watches++
				}
			}
			if watchList && (streamed < 2 || lists != 0) {
				t.Errorf("watch-list server: %d streamed lists, %d lists; want one streamed list per type and no list: %q", streamed, lists, f.seen())
			}
			if !watchList && (lists < 2 || watches < 2) {
				t.Errorf("list-then-watch server: %d lists, %d watches; want one of each per type: %q", lists, watches, f.seen())
			}
		})
	}
}

// TestKeychainWaitsForKubeconfig: a kubeconfig path that does not exist
// yet is looked for again every PollInterval, and used once it is there.
func TestKeychainWaitsForKubeconfig(t *testing.T) {
	f := newFakeAPI(t, true)
	f.put(pullSecret("a", "pull", corev1.SecretTypeDockerConfigJson, dockerConfigJSON("alice", "pw", "reg.example")))
	dir := t.TempDir()
	path := filepath.Join(dir, "kubeconfig")
	polled := make(chan time.Duration, 10)
	tick := make(chan time.Time)
	k, _ := start(t, Options{
		KubeconfigPath: path,
		PollInterval:   time.Minute,
		After: func(d time.Duration) <-chan time.Time {
			polled <- d
			return tick
		},
	})
	for range 2 {
		select {
		case d := <-polled:
			if d != time.Minute {
				t.Fatalf("polled after %s, want PollInterval", d)
			}
		case <-time.After(waitLimit):
			t.Fatal("keychain did not wait for the kubeconfig")
		}
		select {
		case <-k.Synced():
			t.Fatal("synced without a kubeconfig")
		default:
		}
		if n := len(f.seen()); n != 0 {
			t.Fatalf("%d requests without a kubeconfig", n)
		}
		tick <- time.Time{}
	}
	<-polled
	if got := f.kubeconfig(dir); got != path {
		t.Fatalf("kubeconfig written to %s", got)
	}
	tick <- time.Time{}
	waitSynced(t, k)
	checkCreds(t, k, "reg.example", "alice", "pw")
}

// TestKeychainHostileSecrets: secrets are written by anyone who may create
// one in some namespace, and an API server may not apply the field
// selector: too large, malformed, credential-helper-only and non-pull
// secrets give no credentials and never run a program, each bad one with
// a warning naming it and not quoting it; a secret with one bad entry
// still gives its good ones.
func TestKeychainHostileSecrets(t *testing.T) {
	bin := t.TempDir()
	marker := filepath.Join(t.TempDir(), "helper-ran")
	helper := "#!/bin/sh\necho ran > " + marker + "\necho '{\"Username\":\"evil\",\"Secret\":\"evil\"}'\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-evil"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	f := newFakeAPI(t, true)
	f.ignoreSelector = true
	big := dockerConfigJSON("big", "hunter2-big", "big.example", strings.Repeat("x", 600)+".example")
	f.put(pullSecret("big", "pull", corev1.SecretTypeDockerConfigJson, big))
	f.put(pullSecret("bad", "json", corev1.SecretTypeDockerConfigJson, `{"auths": {"bad.example": {"password": "hunter2-bad`))
	f.put(pullSecret("bad", "type", corev1.SecretTypeDockerConfigJson, `{"auths": {"bad.example": {"password": 7}}}`))
	f.put(pullSecret("helper", "pull", corev1.SecretTypeDockerConfigJson,
		`{"auths": {"helper.example": {}}, "credsStore": "evil", "credHelpers": {"helper.example": "evil"}}`))
	f.put(pullSecret("partly", "pull", corev1.SecretTypeDockerConfigJson,
		`{"auths": {"ok.example": {"username": "u", "password": "p"}, "notb64.example": {"auth": "%%hunter2%%"},`+
			` "*.wild.example": {"username": "w", "password": "w"}, "nocolon.example": {"auth": "`+
			base64.StdEncoding.EncodeToString([]byte("hunter2"))+`"}}}`))
	f.put(pullSecret("opaque", "token", corev1.SecretTypeOpaque, "hunter2-opaque"))
	f.put(pullSecret("empty", "pull", corev1.SecretTypeDockerConfigJson, `{"auths": {}}`))
	delete(f.secrets["empty/pull"].Data, corev1.DockerConfigJsonKey)

	k, rec := start(t, Options{KubeconfigPath: f.kubeconfig(t.TempDir()), MaxSecretBytes: 512})
	waitSynced(t, k)
	for _, h := range []string{"big.example", "bad.example", "helper.example", "notb64.example", "nocolon.example", "x.wild.example", "*.wild.example"} {
		checkCreds(t, k, h, "", "")
	}
	checkCreds(t, k, "ok.example", "u", "p")
	if k.Len() != 1 {
		t.Errorf("%d secrets give credentials, want 1 (partly/pull)", k.Len())
	}
	for _, want := range [][]string{
		{"skipped", "big/pull", "bytes, over the bound of 512"},
		{"skipped", "bad/json", "syntax error"},
		{"skipped", "bad/type", "not a docker config"},
		{"skipped", "empty/pull", "no .dockerconfigjson"},
		{"partly read", "partly/pull", "is not"},
	} {
		rec.waitWarning(t, want...)
	}
	for _, w := range rec.warnings() {
		if strings.Contains(w, "hunter2") {
			t.Errorf("warning quotes a secret: %s", w)
		}
		if strings.Contains(w, "helper/pull") {
			t.Errorf("a secret naming only credential helpers is not malformed: %s", w)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a credential helper named by a secret ran")
	}
}

// TestKeychainRefused: without RBAC on secrets the API server refuses the
// list; client-go's failure reaches the daemon's log as a warning, and the
// keychain syncs once the permission is granted.
func TestKeychainRefused(t *testing.T) {
	f := newFakeAPI(t, true)
	f.put(pullSecret("a", "pull", corev1.SecretTypeDockerConfigJson, dockerConfigJSON("alice", "pw", "reg.example")))
	f.setRefuse(http.StatusForbidden)
	k, rec := start(t, Options{KubeconfigPath: f.kubeconfig(t.TempDir())})
	rec.waitWarning(t, "client-go", "forbidden")
	select {
	case <-k.Synced():
		t.Fatal("synced while refused")
	default:
	}
	checkCreds(t, k, "reg.example", "", "")
	f.setRefuse(0)
	waitSynced(t, k)
	checkCreds(t, k, "reg.example", "alice", "pw")
}
