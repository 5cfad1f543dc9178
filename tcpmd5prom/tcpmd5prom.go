// Package tcpmd5prom is a Prometheus collector for a [metrics.Set]: the
// segments the kernel drops for their signature by peer and reason, the
// connections a tcpmd5 Listener refused by peer and reason, and the
// kernel's signature counters, as families of a client_golang registry.
// It is a module of its own, so that the tcpmd5 module needs no
// Prometheus library; without client_golang, a [metrics.Set] serves the
// same series itself as an http.Handler.
//
//	var set metrics.Set
//	prometheus.MustRegister(tcpmd5prom.New(&set))
//	stop, err := set.WatchDrops(drops.Filter{Port: 179}) // where the kernel reports drops
//	lc := tcpmd5.ListenConfig{Keys: keys, OnRefuse: set.Refused}
package tcpmd5prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcplowlevel/tcpmd5/metrics"
)

// Collector collects a [metrics.Set]. It is safe for concurrent use. A
// registry gathers from goroutines of its own, so the kernel's counters it
// serves are those of the process's network namespace.
type Collector struct {
	set   *metrics.Set
	descs []*prometheus.Desc // one per metrics.Families entry
	types []prometheus.ValueType
}

// New returns a collector of set's families.
func New(set *metrics.Set) *Collector {
	c := &Collector{set: set}
	for _, f := range metrics.Families {
		c.descs = append(c.descs, prometheus.NewDesc(f.Name, f.Help, f.Labels, nil))
		t := prometheus.CounterValue
		if f.Type == "gauge" {
			t = prometheus.GaugeValue
		}
		c.types = append(c.types, t)
	}
	return c
}

// Describe sends the descriptions of every family.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect sends the families' samples now.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for i, samples := range c.set.Gather() {
		for _, s := range samples {
			ch <- prometheus.MustNewConstMetric(c.descs[i], c.types[i], s.Value, s.Labels...)
		}
	}
}
