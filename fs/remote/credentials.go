package remote

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
)

// dockerHubKeys are the names docker config.json uses for Docker Hub.
var dockerHubKeys = []string{"https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"}

// DockerConfigCredentials returns a Credentials callback answering from the
// "auths" section of a docker config.json at path (read on every call, so
// edits apply). Credential helpers and stores are not consulted. A missing
// file or host gives anonymous access.
func DockerConfigCredentials(path string) func(host string) (string, string, error) {
	return func(host string) (string, string, error) {
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return "", "", nil
		}
		if err != nil {
			return "", "", fmt.Errorf("read docker config: %w", err)
		}
		var cfg struct {
			Auths map[string]dockerAuth `json:"auths"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return "", "", fmt.Errorf("parse docker config %s: %w", path, err)
		}
		names := slices.Sorted(maps.Keys(cfg.Auths))
		for _, key := range configKeys(host) {
			for _, k := range names {
				if normalizeConfigKey(k) == key {
					return cfg.Auths[k].credentials(host)
				}
			}
		}
		return "", "", nil
	}
}

// dockerAuth is one entry of config.json's "auths".
type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// credentials answers the user name and secret; an identity token is a
// refresh token, which containerd's authorizer takes with an empty user.
func (a dockerAuth) credentials(host string) (string, string, error) {
	if a.IdentityToken != "" {
		return "", a.IdentityToken, nil
	}
	if a.Auth == "" {
		return a.Username, a.Password, nil
	}
	raw, err := base64.StdEncoding.DecodeString(a.Auth)
	if err != nil {
		return "", "", fmt.Errorf("docker config auth for %s: not base64", host)
	}
	user, secret, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", fmt.Errorf("docker config auth for %s: not user:secret", host)
	}
	return user, secret, nil
}

// configKeys lists the normalized config keys that may hold host's entry.
func configKeys(host string) []string {
	for _, k := range dockerHubKeys {
		if host == normalizeConfigKey(k) {
			keys := make([]string, len(dockerHubKeys))
			for i, hk := range dockerHubKeys {
				keys[i] = normalizeConfigKey(hk)
			}
			return keys
		}
	}
	return []string{host}
}

// normalizeConfigKey reduces "https://host/v1/" style keys to "host".
func normalizeConfigKey(k string) string {
	if _, rest, ok := strings.Cut(k, "://"); ok {
		k = rest
	}
	host, _, _ := strings.Cut(k, "/")
	return host
}
