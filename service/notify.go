package service

import (
	"context"

	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/daemon"
)

// notify sends state to systemd when the daemon runs under a Type=notify
// unit (NOTIFY_SOCKET set); otherwise it does nothing.
func notify(ctx context.Context, state string) {
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("sd_notify %s", state)
		return
	}
	if sent {
		log.G(ctx).Debugf("sd_notify %s", state)
	}
}
