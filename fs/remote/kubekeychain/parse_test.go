package kubekeychain

import (
	"encoding/base64"
	"errors"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"reg.example":                 "reg.example",
		"REG.Example:5000":            "reg.example:5000",
		"https://reg.example/v2/":     "reg.example",
		"http://reg.example:80/path":  "reg.example:80",
		"https://index.docker.io/v1/": "docker.io",
		"index.docker.io":             "docker.io",
		"registry-1.docker.io":        "docker.io",
		"docker.io":                   "docker.io",
		"[::1]:5000":                  "[::1]:5000",
		" reg.example ":               "reg.example",
		"":                            "",
		"*.example":                   "",
		"user@reg.example":            "",
		"reg example":                 "",
		"https://":                    "",
		"reg.example\x00.evil":        "",
		"ftp://reg.example":           "",
	} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseDockerConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		typ     corev1.SecretType
		data    string
		want    map[string]cred
		wantErr bool
	}{
		{"auth field", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"https://index.docker.io/v1/": {"auth": "` + b64("u:p:q") + `"}}}`,
			map[string]cred{"docker.io": {"u", "p:q"}}, false},
		{"auth wins over fields", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"r": {"auth": "` + b64("a:b") + `", "username": "x", "password": "y"}}}`,
			map[string]cred{"r": {"a", "b"}}, false},
		{"fields", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"r": {"username": "x", "password": "y", "email": "e"}}}`,
			map[string]cred{"r": {"x", "y"}}, false},
		{"identity token first", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"r": {"auth": "` + b64("a:b") + `", "identitytoken": "tok"}}}`,
			map[string]cred{"r": {"", "tok"}}, false},
		{"legacy layout", corev1.SecretTypeDockercfg,
			`{"r:5000": {"auth": "` + b64("a:b") + `", "email": "e"}}`,
			map[string]cred{"r:5000": {"a", "b"}}, false},
		{"helpers ignored", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"r": {}}, "credsStore": "x", "credHelpers": {"r": "x"}}`,
			map[string]cred{}, true},
		{"two spellings, one answer", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"https://r/v1/": {"username": "b", "password": "1"}, "r": {"username": "a", "password": "2"}}}`,
			map[string]cred{"r": {"a", "2"}}, false},
		{"bad entry among good", corev1.SecretTypeDockerConfigJson,
			`{"auths": {"r": {"auth": "!!"}, "s": {"username": "a", "password": "b"}}}`,
			map[string]cred{"s": {"a", "b"}}, true},
		{"not json", corev1.SecretTypeDockerConfigJson, `{"auths"`, nil, true},
		{"wrong shape", corev1.SecretTypeDockerConfigJson, `{"auths": []}`, nil, true},
		{"legacy given the current layout", corev1.SecretTypeDockercfg, `{"auths": {"r": {"username": "a"}}}`,
			map[string]cred{}, true},
		{"not a pull secret", corev1.SecretTypeOpaque, `{}`, nil, true},
		{"null", corev1.SecretTypeDockerConfigJson, `null`, map[string]cred{}, true},
	} {
		got, err := parseDockerConfig(tc.typ, []byte(tc.data))
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: error %v, want error %v", tc.name, err, tc.wantErr)
		}
		if !maps.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A config that names no registry with credentials is told apart, so
	// that it is not a warning.
	if _, err := parseDockerConfig(corev1.SecretTypeDockerConfigJson, []byte(`{"auths": {}}`)); !errors.Is(err, errNoCredentials) {
		t.Errorf("empty auths: %v, want errNoCredentials", err)
	}
}
