package remote

import (
	"fmt"

	dockerconfig "github.com/docker/cli/cli/config"
)

// DockerConfigCredentials returns a Credentials callback answering from the
// docker config.json in dir ("" for docker's default: $DOCKER_CONFIG, else
// ~/.docker), through docker's own loader: "auths" entries, "credHelpers"
// per registry and the "credsStore" (docker-credential-<name> programs on
// PATH). The file is read on every call, so edits and rotated secrets apply;
// the authorizer calls it once per challenge, not per request. A missing
// file or entry gives anonymous access. Errors never include secrets.
func DockerConfigCredentials(dir string) func(host string) (string, string, error) {
	return func(host string) (string, string, error) {
		cfg, err := dockerconfig.Load(dir)
		if err != nil {
			return "", "", fmt.Errorf("load docker config: %w", err)
		}
		key := host
		if IsDockerHub(host) {
			key = DockerHubConfigKey
		}
		ac, err := cfg.GetAuthConfig(key)
		if err != nil {
			return "", "", fmt.Errorf("docker credentials for %s: %w", host, err)
		}
		// An identity token is a refresh token, which the authorizer takes
		// with an empty user name.
		if ac.IdentityToken != "" {
			return "", ac.IdentityToken, nil
		}
		return ac.Username, ac.Password, nil
	}
}

// ChainCredentials returns a Credentials callback asking each source in
// order and answering with the first non-empty credentials. A source's
// error is returned only when no later source has credentials, so a broken
// docker config does not hide credentials found elsewhere, nor the reverse.
// Nil sources are skipped.
func ChainCredentials(sources ...func(host string) (string, string, error)) func(host string) (string, string, error) {
	return func(host string) (string, string, error) {
		var firstErr error
		for _, src := range sources {
			if src == nil {
				continue
			}
			user, secret, err := src(host)
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			if user != "" || secret != "" {
				return user, secret, nil
			}
		}
		return "", "", firstErr
	}
}
