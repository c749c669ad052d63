// The image automation probes:
//
//	-engine registryfixture  writes -images repositories of -tags tags each
//	                         straight into a distribution registry's storage
//	                         (-registry-root), every -every'th tag main-NNNN
//	                         with an image of its own built an hour after the
//	                         one before, the others pr-NNNN sharing one image.
//	-engine imagepush        pushes a newer main- tag to the registry
//	                         (-registry) over its HTTP API, one repository
//	                         after the other, and times until Deployment
//	                         app-NNN in -namespace runs it; one latency per
//	                         line.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

var images struct {
	root     string
	registry string
	count    int
	tags     int
	every    int
}

func init() {
	flag.StringVar(&images.root, "registry-root", "", "registryfixture: the registry's rootdirectory")
	flag.StringVar(&images.registry, "registry", "", "imagepush: the registry's host:port")
	flag.IntVar(&images.count, "images", 100, "registryfixture, imagepush: how many repositories (bench/app-NNN)")
	flag.IntVar(&images.tags, "tags", 1000, "registryfixture: tags per repository")
	flag.IntVar(&images.every, "every", 20, "registryfixture: one tag in this many is a main- tag with its own image")
}

const schema2 = "application/vnd.docker.distribution.manifest.v2+json"

// The empty layer every image has: an empty tar.
var layer = make([]byte, 1024)

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// An image built at `created`: its config and manifest.
func image(created time.Time) (config, manifest []byte) {
	config, _ = json.Marshal(map[string]any{
		"created": created.UTC().Format(time.RFC3339), "architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digestOf(layer)}},
		"config": map[string]any{},
	})
	manifest, _ = json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": schema2,
		"config": map[string]any{"mediaType": "application/vnd.docker.container.image.v1+json",
			"digest": digestOf(config), "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
			"digest": digestOf(layer), "size": len(layer)}},
	})
	return config, manifest
}

// The first main- image's build time; each next one an hour later.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func write(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

func registryFixture() error {
	v2 := filepath.Join(images.root, "docker/registry/v2")
	blob := func(data []byte) (string, error) {
		d := digestOf(data)
		hexed := strings.TrimPrefix(d, "sha256:")
		return d, write(filepath.Join(v2, "blobs/sha256", hexed[:2], hexed, "data"), data)
	}
	link := func(repo, kind, d string) error {
		return write(filepath.Join(v2, "repositories", repo, kind, "sha256", strings.TrimPrefix(d, "sha256:"), "link"), []byte(d))
	}
	layerDigest, err := blob(layer)
	if err != nil {
		return err
	}
	type built struct{ config, manifest string }
	var mains []built
	for i := 0; i*images.every < images.tags; i++ {
		config, manifest := image(epoch.Add(time.Duration(i) * time.Hour))
		c, err := blob(config)
		if err != nil {
			return err
		}
		m, err := blob(manifest)
		if err != nil {
			return err
		}
		mains = append(mains, built{c, m})
	}
	prConfig, prManifest := image(epoch.Add(-24 * time.Hour))
	prC, err := blob(prConfig)
	if err != nil {
		return err
	}
	prM, err := blob(prManifest)
	if err != nil {
		return err
	}
	for n := range images.count {
		repo := fmt.Sprintf("bench/app-%03d", n)
		for _, d := range []string{layerDigest, prC} {
			if err := link(repo, "_layers", d); err != nil {
				return err
			}
		}
		if err := link(repo, "_manifests/revisions", prM); err != nil {
			return err
		}
		for _, b := range mains {
			if err := link(repo, "_layers", b.config); err != nil {
				return err
			}
			if err := link(repo, "_manifests/revisions", b.manifest); err != nil {
				return err
			}
		}
		for t := range images.tags {
			tag, d := fmt.Sprintf("pr-%04d", t), prM
			if t%images.every == 0 {
				tag, d = fmt.Sprintf("main-%04d", t), mains[t/images.every].manifest
			}
			path := filepath.Join(v2, "repositories", repo, "_manifests/tags", tag, "current/link")
			if err := write(path, []byte(d)); err != nil {
				return err
			}
		}
	}
	return nil
}

// One request to the registry; its answer must be `want`.
func call(method, url, contentType string, body []byte, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return resp, nil
}

func upload(repo string, data []byte) error {
	base := "http://" + images.registry
	resp, err := call("POST", base+"/v2/"+repo+"/blobs/uploads/", "", nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	location := resp.Header.Get("Location")
	if strings.HasPrefix(location, "/") {
		location = base + location
	}
	sep := "?"
	if strings.Contains(location, "?") {
		sep = "&"
	}
	_, err = call("PUT", location+sep+"digest="+digestOf(data), "application/octet-stream", data, http.StatusCreated)
	return err
}

func imagePush(ctx context.Context, config *rest.Config) error {
	core, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	deployments := core.AppsV1().Deployments(probe.namespace)
	for i := range probe.rounds {
		n := i % images.count
		repo := fmt.Sprintf("bench/app-%03d", n)
		tag := fmt.Sprintf("main-9%03d", i)
		cfg, manifest := image(time.Now())
		if err := upload(repo, cfg); err != nil {
			return err
		}
		name := fmt.Sprintf("app-%03d", n)
		current, err := deployments.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := fmt.Sprintf("%s/%s:%s", images.registry, repo, tag)
		start := time.Now()
		if _, err := call("PUT", "http://"+images.registry+"/v2/"+repo+"/manifests/"+tag, schema2, manifest, http.StatusCreated); err != nil {
			return err
		}
		wait, cancel := context.WithTimeout(ctx, 60*time.Second)
		w, err := deployments.Watch(wait, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: current.ResourceVersion})
		if err != nil {
			cancel()
			return err
		}
		seen := false
		for event := range w.ResultChan() {
			d, ok := event.Object.(*appsv1.Deployment)
			if ok && len(d.Spec.Template.Spec.Containers) > 0 && d.Spec.Template.Spec.Containers[0].Image == want {
				seen = true
				break
			}
		}
		w.Stop()
		cancel()
		if !seen {
			return fmt.Errorf("%s/%s never ran %s", probe.namespace, name, want)
		}
		fmt.Println(time.Since(start).Microseconds())
	}
	return nil
}
