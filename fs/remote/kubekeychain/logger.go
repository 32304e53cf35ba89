package kubekeychain

import (
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
)

// newLogger returns a logr.Logger (what client-go logs to) writing to l:
// client-go's errors as warnings, its level-0 messages at debug, its
// verbose ones not at all. Values other than plain ones (strings, numbers,
// errors, durations) are logged by type only: client-go passes whole watch
// events and objects, which here are secrets.
func newLogger(l *logrus.Entry) logr.Logger {
	return logr.New(&sink{l: l})
}

type sink struct {
	l    *logrus.Entry
	name string
}

func (s *sink) Init(logr.RuntimeInfo) {}

func (s *sink) Enabled(level int) bool { return level <= 0 }

func (s *sink) Info(level int, msg string, kv ...any) {
	if level > 0 {
		return
	}
	s.entry(kv).Debug(s.prefix() + msg)
}

func (s *sink) Error(err error, msg string, kv ...any) {
	e := s.entry(kv)
	if err != nil {
		e = e.WithError(err)
	}
	e.Warn(s.prefix() + msg)
}

func (s *sink) WithValues(kv ...any) logr.LogSink {
	return &sink{l: s.entry(kv), name: s.name}
}

func (s *sink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	return &sink{l: s.l, name: name}
}

func (s *sink) prefix() string {
	if s.name == "" {
		return "kubeconfig keychain: client-go: "
	}
	return "kubeconfig keychain: client-go " + s.name + ": "
}

func (s *sink) entry(kv []any) *logrus.Entry {
	if len(kv) == 0 {
		return s.l
	}
	fields := logrus.Fields{}
	for i := 0; i+1 < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok || k == "" || strings.ContainsAny(k, " \n") {
			continue
		}
		fields[k] = plain(kv[i+1])
	}
	return s.l.WithFields(fields)
}

// plain returns v when it is a plain value, else its type's name.
func plain(v any) any {
	switch v := v.(type) {
	case nil, string, bool, int, int32, int64, uint, uint32, uint64, float64, time.Duration:
		return v
	case error:
		return v.Error()
	default:
		return fmt.Sprintf("(%T)", v)
	}
}
