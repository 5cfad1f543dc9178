package main

import (
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestRunWritesCharts(t *testing.T) {
	dir := t.TempDir()
	if err := run("testdata/report.json", dir, "svg"); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"throughput": {"Bulk throughput over loopback", "plain TCP", "MD5, tcpmd5", "MD5, x/sys baseline", "MD5 hashing bound", "8 connections"},
		"setup":      {"Connection set-up", "MD5, tcpmd5", "MD5, x/sys baseline"},
		"accept":     {"Accept rate against keys", "plain TCP (no keys)", ">900<"},
		"setkey":     {"SetKey against keys", "µs per call", ">900<"},
	}
	for name, texts := range want {
		b, err := os.ReadFile(filepath.Join(dir, name+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		svg := string(b)
		if !strings.HasPrefix(svg, "<?xml") || !strings.Contains(svg, "<svg") {
			t.Errorf("%s.svg is not an SVG document", name)
		}
		texts = append(texts, "median of 2 rounds", "AMD EPYC, 2 CPUs")
		for _, text := range texts {
			if !strings.Contains(svg, text) {
				t.Errorf("%s.svg does not show %q", name, text)
			}
		}
		if n := strings.Count(svg, "<path"); n < 10 {
			t.Errorf("%s.svg has %d paths, too few for a chart", name, n)
		}
		if !strings.Contains(svg, "@font-face") {
			t.Errorf("%s.svg does not carry its fonts: it would read differently on a machine without them", name)
		}
		if m := regexp.MustCompile(`>-?[0-9]+\.0+<`).FindString(svg); m != "" {
			t.Errorf("%s.svg has a tick label with trailing zeros: %s", name, m)
		}
	}
}

// TestRunWritesPNG draws the charts as PNG images, with the fonts the plot
// module ships.
func TestRunWritesPNG(t *testing.T) {
	dir := t.TempDir()
	if err := run("testdata/report.json", dir, "png"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"throughput", "setup", "accept", "setkey"} {
		f, err := os.Open(filepath.Join(dir, name+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s.png: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
			t.Errorf("%s.png is %v, too small for a chart", name, b)
		}
	}
}

func TestRunRejectsEmptyReport(t *testing.T) {
	f := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(f, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run(f, t.TempDir(), "svg")
	if err == nil || !strings.Contains(err.Error(), "no measurements") {
		t.Fatalf("want an error about missing measurements, got %v", err)
	}
}
