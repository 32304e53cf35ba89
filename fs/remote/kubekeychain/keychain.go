// Package kubekeychain answers registry credentials from the image pull
// secrets of a Kubernetes cluster, the [kubeconfig_keychain] of the
// configuration file. It lists and watches, in all namespaces, the secrets
// of type kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg
// through the API server named by a kubeconfig (client-go informers, so a
// rotated or deleted secret applies as soon as the API server tells), and
// answers the registry client's Credentials callback by registry host.
//
// Secrets are written by whoever may create one in any namespace, so their
// content is hostile: each secret's docker config is bounded in size and
// parsed by this package (only the registries' credentials are read, never
// credential helpers, which would run programs); a secret that is too
// large or malformed is skipped with a warning naming it, never its
// content. Only what the lookups need is kept in memory.
package kubekeychain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Defaults of Options.
const (
	// DefaultPollInterval is how often a kubeconfig that is missing or
	// unusable is read again (the reference waits for it the same way).
	DefaultPollInterval = 10 * time.Second
	// DefaultMaxSecretBytes bounds one secret's docker config: the API
	// server's own bound on a whole secret.
	DefaultMaxSecretBytes = 1 << 20
)

// secretTypes are the pull secret types the keychain watches, one informer
// each: a field selector cannot ask for either of two types.
var secretTypes = []corev1.SecretType{corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg}

// tooLargeAnnotation marks, in the keychain's own trimmed copy of a secret,
// a docker config that was dropped for its size, and holds the size.
const tooLargeAnnotation = "kubekeychain.soci/too-large"

// Options configures a Keychain.
type Options struct {
	// KubeconfigPath is the kubeconfig naming the API server and the
	// daemon's credentials for it. "": client-go's default rules
	// ($KUBECONFIG, else ~/.kube/config), and when they find nothing the
	// pod's service account (in-cluster config). A path that does not
	// exist yet is waited for.
	KubeconfigPath string
	// PollInterval is how often a missing or unusable kubeconfig is read
	// again. 0: DefaultPollInterval.
	PollInterval time.Duration
	// MaxSecretBytes bounds the docker config of one secret; a larger one
	// is skipped with a warning. 0: DefaultMaxSecretBytes.
	MaxSecretBytes int
	// After is the clock of the polls; nil: time.After.
	After func(time.Duration) <-chan time.Time
}

// secretCreds is what one secret gives: credentials by host.
type secretCreds struct {
	typ   corev1.SecretType
	creds map[string]cred
}

// Keychain holds the registry credentials of the cluster's pull secrets.
// It is safe for concurrent use.
type Keychain struct {
	opts Options

	mu      sync.RWMutex
	secrets map[string]secretCreds // by namespace/name
	changed chan struct{}          // closed and replaced when secrets changes

	synced chan struct{} // closed once every informer has listed
	done   chan struct{} // closed when Start's goroutine returns
}

// Start returns a Keychain and, in the background until ctx is done, waits
// for the kubeconfig, then lists and watches the cluster's pull secrets.
// Until the first list completes (Synced), Credentials answers nothing, so
// the next source of the chain is asked. Progress and failures are logged
// to ctx's logger.
func Start(ctx context.Context, opts Options) *Keychain {
	k := newKeychain(opts)
	go k.run(ctx)
	return k
}

func newKeychain(opts Options) *Keychain {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.MaxSecretBytes <= 0 {
		opts.MaxSecretBytes = DefaultMaxSecretBytes
	}
	if opts.After == nil {
		opts.After = time.After
	}
	return &Keychain{
		opts:    opts,
		secrets: map[string]secretCreds{},
		changed: make(chan struct{}),
		synced:  make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Synced is closed once the first list of every watched secret type has
// been read.
func (k *Keychain) Synced() <-chan struct{} { return k.synced }

// Done is closed when the keychain has stopped after its context ended.
func (k *Keychain) Done() <-chan struct{} { return k.done }

// Credentials answers the registry client's Credentials callback: the
// credentials some pull secret gives host (its host[:port]; every name of
// Docker Hub is one), or none. When several secrets name the host, the one
// first by namespace/name answers, the same one every time. It never
// returns an error: a broken secret is skipped when it is read.
func (k *Keychain) Credentials(host string) (string, string, error) {
	h := normalizeHost(host)
	if h == "" {
		return "", "", nil
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	best, found := "", false
	var c cred
	for key, sc := range k.secrets {
		if hc, ok := sc.creds[h]; ok && (!found || key < best) {
			best, c, found = key, hc, true
		}
	}
	return c.user, c.secret, nil
}

// Len returns how many secrets currently give credentials.
func (k *Keychain) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.secrets)
}

func (k *Keychain) run(ctx context.Context) {
	defer close(k.done)
	l := log.G(ctx).WithField("kubeconfig", k.opts.KubeconfigPath)
	ctx = log.WithLogger(ctx, l)
	// client-go logs through the context's logger: route it to ours, so
	// that its lines (a refused list, a dropped watch) keep the daemon's
	// log format.
	ctx = klog.NewContext(ctx, newLogger(l))

	client, ok := k.waitClient(ctx)
	if !ok {
		return
	}
	var informers []cache.SharedIndexInformer
	var wg sync.WaitGroup
	for _, t := range secretTypes {
		inf := k.informer(ctx, client, t)
		informers = append(informers, inf)
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	synced := make([]cache.InformerSynced, len(informers))
	for i, inf := range informers {
		synced[i] = inf.HasSynced
	}
	if cache.WaitForCacheSync(ctx.Done(), synced...) {
		close(k.synced)
		log.G(ctx).WithField("secrets", k.Len()).Info("kubeconfig keychain: image pull secrets listed; watching for changes")
	}
	wg.Wait()
}

// waitClient reads the kubeconfig until it gives a client, every
// PollInterval. A failure is logged once, and again only when it changes.
// false: ctx ended first.
func (k *Keychain) waitClient(ctx context.Context) (cache.Getter, bool) {
	var last string
	for {
		client, err := k.client()
		if err == nil {
			log.G(ctx).Info("kubeconfig keychain: connecting to the API server")
			return client, true
		}
		switch {
		case errors.Is(err, os.ErrNotExist):
			if last == "" {
				log.G(ctx).Infof("kubeconfig keychain: waiting for the kubeconfig file (checked every %s)", k.opts.PollInterval)
			}
			last = "waiting"
		case err.Error() != last:
			log.G(ctx).WithError(err).Warnf("kubeconfig keychain: cannot use the kubeconfig; trying again every %s", k.opts.PollInterval)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-k.opts.After(k.opts.PollInterval):
		}
	}
}

// client builds the API client from the kubeconfig.
func (k *Keychain) client() (cache.Getter, error) {
	if p := k.opts.KubeconfigPath; p != "" {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.opts.KubeconfigPath
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.WarningHandler = rest.NoWarnings{}
	cfg.UserAgent = "soci-snapshotter-grpc kubeconfig keychain"
	// A REST client of the core group knowing only its types (secrets and
	// the list and watch envelopes): client-go's typed clients would link
	// every API group into the daemon, tens of megabytes, for one resource.
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.APIPath = "/api"
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	client, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// informer lists and watches the secrets of type t in all namespaces.
func (k *Keychain) informer(ctx context.Context, client cache.Getter, t corev1.SecretType) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(client, "secrets", metav1.NamespaceAll, fields.OneTermEqualSelector("type", string(t)))
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Secret{}, cache.SharedIndexInformerOptions{
		ObjectDescription: "image pull secrets (" + string(t) + ")",
	})
	// Neither can fail before the informer runs.
	_ = inf.SetTransform(k.trim)
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.set(ctx, t, obj) },
		UpdateFunc: func(_, obj any) { k.set(ctx, t, obj) },
		DeleteFunc: func(obj any) { k.remove(t, obj) },
	})
	return inf
}

// trim keeps of a secret only what set reads, so that the informer's cache
// holds no more than that: name, namespace, version, type and the docker
// config (dropped when over MaxSecretBytes, its size noted instead). It may
// be given its own output again, and then returns it unchanged.
func (k *Keychain) trim(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	out := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.Name, Namespace: s.Namespace, UID: s.UID, ResourceVersion: s.ResourceVersion,
		},
		Type: s.Type,
	}
	if n, ok := s.Annotations[tooLargeAnnotation]; ok {
		out.Annotations = map[string]string{tooLargeAnnotation: n}
	}
	if key := dataKey(s.Type); key != "" {
		if data, ok := s.Data[key]; ok {
			if len(data) > k.opts.MaxSecretBytes {
				out.Annotations = map[string]string{tooLargeAnnotation: strconv.Itoa(len(data))}
			} else {
				out.Data = map[string][]byte{key: data}
			}
		}
	}
	return out, nil
}

// set reads a secret added or updated by the informer of type t,
// replacing what it gave before. A secret that gives no credentials
// (malformed, too large) gives none from now on, with a warning. A secret
// of another type (an API server that ignored the field selector) is left
// to the informer of its type.
func (k *Keychain) set(ctx context.Context, t corev1.SecretType, obj any) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	key := s.Namespace + "/" + s.Name
	l := log.G(ctx).WithField("secret", key)
	if s.Type != t {
		l.WithField("type", string(s.Type)).Debugf("kubeconfig keychain: ignoring a secret the API server sent for type %s", t)
		return
	}
	creds, err := k.read(s)
	if err != nil && !errors.Is(err, errNoCredentials) {
		if len(creds) == 0 {
			l.WithError(err).Warn("kubeconfig keychain: image pull secret skipped")
		} else {
			l.WithError(err).Warn("kubeconfig keychain: image pull secret partly read")
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(creds) == 0 {
		delete(k.secrets, key)
	} else {
		k.secrets[key] = secretCreds{typ: t, creds: creds}
	}
	k.notify()
}

// notify wakes those waiting for a change. k.mu is held.
func (k *Keychain) notify() {
	close(k.changed)
	k.changed = make(chan struct{})
}

// changes returns a channel closed at the next change of the secrets read.
func (k *Keychain) changes() <-chan struct{} {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.changed
}

// read returns the credentials a trimmed secret gives, by host.
func (k *Keychain) read(s *corev1.Secret) (map[string]cred, error) {
	key := dataKey(s.Type)
	if n, ok := s.Annotations[tooLargeAnnotation]; ok {
		return nil, fmt.Errorf("%s is %s bytes, over the bound of %d", key, n, k.opts.MaxSecretBytes)
	}
	data, ok := s.Data[key]
	if !ok {
		return nil, fmt.Errorf("no %s in the secret", key)
	}
	return parseDockerConfig(s.Type, data)
}

// remove forgets a secret of type t that was deleted.
func (k *Keychain) remove(t corev1.SecretType, obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if sc, ok := k.secrets[key]; ok && sc.typ == t {
		delete(k.secrets, key)
		k.notify()
	}
}
