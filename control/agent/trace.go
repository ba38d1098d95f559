package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/query"
	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
	"github.com/xdpolicy/xdpolicy/dataplane/worker"
)

// TraceRingSize is the number of verdict records the agent's trace ring
// holds (about 88 bytes each).
const TraceRingSize = 1 << 14

// ops is the agent's local API beyond health and metrics: the trace
// stream, live explanations and the metrics that need the dataplane's
// state. The control loop tells it about every snapshot it publishes.
type ops struct {
	node     string
	ring     *trace.Ring
	hist     trace.History
	live     atomic.Pointer[liveSnapshot]
	counters *worker.Counters
	flows    *flowtable.Table
	// compileSeconds observes every full compile.
	compile *compileMetrics
	always  bool
}

type liveSnapshot struct {
	cluster  *model.Cluster
	rs       *ruleset.Ruleset
	problems []compile.Problem
}

func newOps(cfg Config, counters *worker.Counters, flows *flowtable.Table) *ops {
	x := &ops{node: cfg.Node, ring: trace.NewRing(cfg.Node, TraceRingSize), counters: counters, flows: flows,
		compile: newCompileMetrics(), always: cfg.TraceAlways}
	if cfg.TraceAlways {
		x.ring.Hold()
	}
	return x
}

// published records a snapshot the control loop has just published, and
// how long compiling it took.
// published remembers a snapshot as soon as workers may use it, so that
// their trace records can be named.
func (x *ops) published(rs *ruleset.Ruleset, took time.Duration) {
	x.hist.Remember(rs)
	x.compile.observe(took)
}

// enforced makes a snapshot the one /explain answers with, once the kernel
// enforces it (pods map synced, generation set, cache revalidated): an
// explanation never runs ahead of what the wire does.
func (x *ops) enforced(c *model.Cluster, rs *ruleset.Ruleset, problems []compile.Problem) {
	x.live.Store(&liveSnapshot{cluster: c, rs: rs, problems: problems})
}

func (x *ops) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /trace", x.handleTrace)
	mux.HandleFunc("GET /explain", x.handleExplain)
}

// pollInterval is how often a following /trace reader looks at the ring:
// writers never wake readers, so that recording stays a few atomic stores.
const pollInterval = 20 * time.Millisecond

// handleTrace streams entries as NDJSON: ?follow=1 the records written from
// now on until the client goes away, else the records the ring holds. Query
// parameters pod, namespace and verdict filter.
func (x *ops) handleTrace(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := trace.ParseFilter(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	var rd *trace.Reader
	if follow {
		rd = x.ring.Follow()
	} else {
		rd = x.ring.Backlog()
	}
	defer rd.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	mode := "while-followed"
	if x.always {
		mode = "always"
	}
	w.Header().Set("X-Xdpolicy-Trace-Recording", mode)
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	enc := json.NewEncoder(w)
	buf := make([]trace.Event, 256)
	var lost uint64
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		n, l := rd.Read(buf)
		lost += l
		for i := range buf[:n] {
			en := trace.Resolve(x.node, &buf[i], &x.hist)
			if !f.Match(&en) {
				continue
			}
			en.Lost, lost = lost, 0
			if err := enc.Encode(&en); err != nil {
				return
			}
		}
		if n > 0 && fl != nil {
			fl.Flush()
		}
		if !follow && (n == 0 || rd.Done()) {
			return
		}
		if n == len(buf) {
			continue
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// handleExplain answers ?from=X&to=Y&port=N/PROTO against the current
// snapshot, as `xdpolicy explain` does offline; ?o=json returns the
// query.Result instead of the text.
func (x *ops) handleExplain(w http.ResponseWriter, r *http.Request) {
	s := x.live.Load()
	if s == nil {
		http.Error(w, "no snapshot enforced yet", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	from, to, port := q.Get("from"), q.Get("to"), q.Get("port")
	if from == "" || to == "" || port == "" {
		http.Error(w, "from, to and port are required (e.g. ?from=ns/a&to=ns/b&port=80/TCP)", http.StatusBadRequest)
		return
	}
	p, err := query.ParsePort(port)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	qq := query.NewCompiled(s.cluster, s.rs, s.problems)
	var eps [2]query.Endpoint
	for i, spec := range []string{from, to} {
		es, err := qq.Endpoints([]string{spec})
		if err == nil && len(es) != 1 {
			err = fmt.Errorf("%q names %d pods; name one", spec, len(es))
		}
		if err != nil {
			http.Error(w, []string{"from ", "to "}[i]+err.Error(), http.StatusBadRequest)
			return
		}
		eps[i] = es[0]
	}
	w.Header().Set("X-Xdpolicy-Generation", fmt.Sprint(s.rs.Generation))
	if q.Get("o") == "json" {
		w.Header().Set("Content-Type", "application/json")
		res := qq.Flow(eps[0], eps[1], p)
		json.NewEncoder(w).Encode(&res)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	qq.Explain(w, eps[0], eps[1], p)
}

// APISocketName is the agent's unix socket inside --state-dir.
const APISocketName = "agent.sock"

// apiSocketPath is where the ops API listens on a unix socket: --api-socket,
// else agent.sock in --state-dir, else nowhere.
func apiSocketPath(cfg Config) string {
	if cfg.APISocket != "" {
		return cfg.APISocket
	}
	if cfg.StateDir != "" {
		return filepath.Join(cfg.StateDir, APISocketName)
	}
	return ""
}

// serveSocket serves srv on the unix socket too (mode 0600: root only, like
// the TCP listener's loopback address), replacing a stale socket file.
func serveSocket(cfg Config, srv *http.Server, log *slog.Logger) error {
	path := apiSocketPath(cfg)
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("api socket: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("api socket: %w", err)
	}
	go srv.Serve(ln)
	log.Info("api socket listening", "path", path)
	return nil
}
