package remote

// Docker Hub's names: the host refs name it by, the host that serves its
// registry API, and the key docker's config.json keeps its credentials
// under.
const (
	DockerHub          = "docker.io"
	DockerHubRegistry  = "registry-1.docker.io"
	DockerHubConfigKey = "https://index.docker.io/v1/"
)

// IsDockerHub reports whether host is one of the names Docker Hub goes by:
// docker.io, index.docker.io or registry-1.docker.io.
func IsDockerHub(host string) bool {
	switch host {
	case DockerHub, "index.docker.io", DockerHubRegistry:
		return true
	}
	return false
}
