package kubekeychain

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// cred is one registry's credentials: a user name and password, or an
// identity (refresh) token with an empty user name, as the registry
// client's Credentials callback answers them.
type cred struct{ user, secret string }

// authEntry is one registry's entry of a docker config, in both the
// current ("auths") and the legacy (.dockercfg) layout.
type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// dataKey is the key of a pull secret's data that holds its docker config,
// by secret type; "" for types that are not pull secrets.
func dataKey(t corev1.SecretType) string {
	switch t {
	case corev1.SecretTypeDockerConfigJson:
		return corev1.DockerConfigJsonKey
	case corev1.SecretTypeDockercfg:
		return corev1.DockerConfigKey
	}
	return ""
}

// errNoCredentials: the docker config parsed but names no registry with
// credentials.
var errNoCredentials = errors.New("no registry with credentials")

// parseDockerConfig reads the docker config of a pull secret of type t:
// {"auths": {"<registry>": entry}} for kubernetes.io/dockerconfigjson,
// {"<registry>": entry} for the legacy kubernetes.io/dockercfg. Only the
// credentials of the entries are read: "credsStore" and "credHelpers",
// which would name programs for the daemon to run, are ignored, as are
// registries that are not a host name (with an optional port). An entry
// whose "auth" is not base64 of user:password is skipped; the first such
// problem is returned along with what could be read. The returned map is
// keyed by normalized host (see normalizeHost).
func parseDockerConfig(t corev1.SecretType, data []byte) (map[string]cred, error) {
	var entries map[string]authEntry
	switch t {
	case corev1.SecretTypeDockerConfigJson:
		var doc struct {
			Auths map[string]authEntry `json:"auths"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			return nil, fmt.Errorf("decode %s: %w", corev1.DockerConfigJsonKey, jsonError(err))
		}
		entries = doc.Auths
	case corev1.SecretTypeDockercfg:
		if err := json.Unmarshal(data, &entries); err != nil {
			return nil, fmt.Errorf("decode %s: %w", corev1.DockerConfigKey, jsonError(err))
		}
	default:
		return nil, fmt.Errorf("secret type %q is not an image pull secret", t)
	}
	creds := make(map[string]cred, len(entries))
	var firstErr error
	for key, e := range entries {
		host := normalizeHost(key)
		if host == "" {
			continue
		}
		c, err := e.cred()
		if err != nil {
			if firstErr == nil {
				// The key is the registry's name, never a secret.
				firstErr = fmt.Errorf("registry %q: %w", key, err)
			}
			continue
		}
		if c == (cred{}) {
			continue
		}
		if prev, ok := creds[host]; ok && prev != c {
			// Two spellings of one registry ("https://r/v1/" and "r")
			// with different credentials: keep one, the same one every
			// time (the smaller pair).
			if prev.user < c.user || (prev.user == c.user && prev.secret < c.secret) {
				continue
			}
		}
		creds[host] = c
	}
	if len(creds) == 0 && firstErr == nil {
		firstErr = errNoCredentials
	}
	return creds, firstErr
}

// jsonError describes a decoding error without quoting the document: a
// syntax error's message holds a character of it, which may be part of a
// password.
func jsonError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("not JSON (syntax error at byte %d)", syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("not a docker config (a JSON %s at byte %d)", typ.Value, typ.Offset)
	}
	return errors.New("not a docker config")
}

// cred returns the entry's credentials as docker reads them: an identity
// token first, else "auth" (base64 of user:password) when set, else the
// username and password fields.
func (e authEntry) cred() (cred, error) {
	if e.IdentityToken != "" {
		return cred{secret: e.IdentityToken}, nil
	}
	if e.Auth == "" {
		return cred{user: e.Username, secret: e.Password}, nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
	if err != nil {
		return cred{}, errors.New(`"auth" is not base64`)
	}
	user, pass, ok := bytes.Cut(raw, []byte(":"))
	if !ok {
		return cred{}, errors.New(`"auth" is not user:password`)
	}
	return cred{user: string(user), secret: string(pass)}, nil
}

// dockerHub is the normalized host of every name of Docker Hub's registry.
const dockerHub = "docker.io"

// normalizeHost turns a docker config key or a registry host into the
// host[:port] they are matched by: scheme and path removed ("https://r/v1/"
// is r), lower case, and every name of Docker Hub ("https://index.docker.io
// /v1/", "index.docker.io", "registry-1.docker.io") docker.io. "" for a key
// that is no host name: wildcards, spaces, user info and the like.
func normalizeHost(key string) string {
	h := strings.ToLower(strings.TrimSpace(key))
	for _, scheme := range []string{"https://", "http://"} {
		if rest, ok := strings.CutPrefix(h, scheme); ok {
			h = rest
			break
		}
	}
	h, _, _ = strings.Cut(h, "/")
	if h == "" || len(h) > 255 || strings.HasPrefix(h, ":") || strings.HasSuffix(h, ":") {
		return ""
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-', r == ':', r == '[', r == ']', r == '_':
		default:
			return ""
		}
	}
	switch h {
	case "index.docker.io", "registry-1.docker.io":
		return dockerHub
	}
	return h
}
