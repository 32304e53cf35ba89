package bench

import (
	"sync"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// memSampleEvery is how often a run samples the snapshotter's memory.
const memSampleEvery = 100 * time.Millisecond

// memSample is the memory of a daemon and its FUSE hosts at one instant.
type memSample struct {
	pss, anon int64 // summed over the processes
	// distinct is the resident pages of all the processes, each page
	// counted once however many of them map it (harness.PageSet): what
	// they hold together. For a single process it is its RSS.
	distinct int64
}

// memSampler tracks the peaks of the summed PSS and RssAnon, and of the
// distinct resident pages, of a set of processes (a daemon and its FUSE
// hosts, which come and go) by sampling /proc every memSampleEvery until
// stopped. Unlike summed VmHWM peaks, those are what the processes held
// together at one instant, with the shared pages of their common
// executable counted once. A distinct sample reads each process's pagemap
// over its accessible mappings: about a millisecond per 30 MB of RSS.
type memSampler struct {
	pids func() []int
	stop chan struct{}
	done chan struct{}

	pages harness.PageSet // the sampler goroutine's (and Stop's, after it ended)

	mu   sync.Mutex
	peak memSample
}

// startMemSampler samples the processes pids returns until stopped.
func startMemSampler(pids func() []int) *memSampler {
	s := &memSampler{pids: pids, stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *memSampler) loop() {
	defer close(s.done)
	t := time.NewTicker(memSampleEvery)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *memSampler) sample() {
	var now memSample
	pids := s.pids()
	// Without root the frames are hidden: the peak stays 0 (not shown).
	now.distinct, _, _ = harness.DistinctResidentBytes(&s.pages, pids)
	for _, pid := range pids {
		m, err := harness.ReadProcMem(pid)
		if err != nil {
			continue // exited between listing and reading
		}
		now.pss += m.PSS
		now.anon += m.RSSAnon
	}
	s.mu.Lock()
	s.peak.pss = max(s.peak.pss, now.pss)
	s.peak.anon = max(s.peak.anon, now.anon)
	s.peak.distinct = max(s.peak.distinct, now.distinct)
	s.mu.Unlock()
}

// Stop takes a last sample and returns the peaks.
func (s *memSampler) Stop() memSample {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}
