// peers is what `cargo xtask bench` measures tidegate beside, and the probes
// it measures a running tidegate with:
//
//	-engine ceiling   a minimal server-side-apply client: one discovery call,
//	                  namespaces first, then every object patched once with
//	                  -concurrency workers, no diff, no rate limit. What the
//	                  API server can take on this machine.
//	-engine flux      Flux v2's apply engine (fluxcd/pkg/ssa ResourceManager
//	                  ApplyAllStaged), with -concurrency and -qps as given.
//	-engine selfheal  edits ConfigMaps as kubectl edit would and times until
//	                  each is reverted; prints one latency per line.
//	-engine push      commits and pushes a change to a ConfigMap's file
//	                  (then posts a signed webhook, with -webhook) and times
//	                  until the ConfigMap holds it; one latency per line.
//
// and the image automation probes of images.go.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func main() {
	engine := flag.String("engine", "ceiling", "ceiling or flux")
	dir := flag.String("dir", "", "directory of YAML manifests")
	concurrency := flag.Int("concurrency", 16, "objects applied (or checked) at once")
	qps := flag.Float64("qps", -1, "client requests per second; negative for no limit")
	burst := flag.Int("burst", 300, "client burst when rate limited")
	flag.StringVar(&probe.namespace, "namespace", "", "probes: the ConfigMaps' namespace")
	flag.StringVar(&probe.names, "names", "", "selfheal: comma-separated ConfigMaps to edit; push: the one to change")
	flag.StringVar(&probe.work, "work", "", "push: the Git work tree")
	flag.StringVar(&probe.file, "file", "", "push: the ConfigMap's file in the work tree")
	flag.StringVar(&probe.webhook, "webhook", "", "push: the generic webhook URL to post after each push")
	flag.StringVar(&probe.secret, "secret", "", "push: the webhook secret")
	flag.IntVar(&probe.rounds, "rounds", 20, "push: how many pushes")
	flag.Parse()
	if err := run(*engine, *dir, *concurrency, float32(*qps), *burst); err != nil {
		fmt.Fprintln(os.Stderr, "applier:", err)
		os.Exit(1)
	}
}

func run(engine, dir string, concurrency int, qps float32, burst int) error {
	objects, err := read(dir)
	if err != nil {
		return err
	}
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return err
	}
	config.QPS = qps
	config.Burst = burst
	ctx := context.Background()
	start := time.Now()
	switch engine {
	case "selfheal":
		return selfheal(ctx, config)
	case "push":
		return push(ctx, config)
	case "registryfixture":
		return registryFixture()
	case "imagepush":
		return imagePush(ctx, config)
	case "ceiling":
		err = ceiling(ctx, config, objects, concurrency)
	case "flux":
		err = flux(ctx, config, objects, concurrency)
	default:
		err = fmt.Errorf("unknown engine %q", engine)
	}
	fmt.Fprintf(os.Stderr, "applier: %s applied %d objects in %s\n", engine, len(objects), time.Since(start))
	return err
}

func read(dir string) ([]*unstructured.Unstructured, error) {
	if dir == "" {
		return nil, nil
	}
	var objects []*unstructured.Unstructured
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var object map[string]any
			if err := decoder.Decode(&object); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return fmt.Errorf("%s: %w", path, err)
			}
			if len(object) > 0 {
				objects = append(objects, &unstructured.Unstructured{Object: object})
			}
		}
	})
	return objects, err
}

// ceiling: one discovery, namespaces, then everything else, each patched
// once with server-side apply.
func ceiling(ctx context.Context, config *rest.Config, objects []*unstructured.Unstructured, concurrency int) error {
	disco, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return err
	}
	groups, err := restmapper.GetAPIGroupResources(disco)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		return err
	}
	var namespaces, rest []*unstructured.Unstructured
	for _, o := range objects {
		if o.GetKind() == "Namespace" {
			namespaces = append(namespaces, o)
		} else {
			rest = append(rest, o)
		}
	}
	for _, stage := range [][]*unstructured.Unstructured{namespaces, rest} {
		if err := applyAll(ctx, dyn, mapper, stage, concurrency); err != nil {
			return err
		}
	}
	return nil
}

func applyAll(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, objects []*unstructured.Unstructured, concurrency int) error {
	work := make(chan *unstructured.Unstructured)
	errs := make(chan error, len(objects))
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range work {
				errs <- applyOne(ctx, dyn, mapper, o)
			}
		}()
	}
	for _, o := range objects {
		work <- o
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func applyOne(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	data, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	var target dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		target = dyn.Resource(mapping.Resource).Namespace(o.GetNamespace())
	}
	force := true
	_, err = target.Patch(ctx, o.GetName(), types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: "bench-ceiling", Force: &force})
	return err
}

// flux: Flux v2's engine as kustomize-controller drives it.
func flux(ctx context.Context, config *rest.Config, objects []*unstructured.Unstructured, concurrency int) error {
	kube, err := client.New(config, client.Options{})
	if err != nil {
		return err
	}
	poller := polling.NewStatusPoller(kube, kube.RESTMapper(), polling.Options{})
	manager := ssa.NewResourceManager(kube, poller, ssa.Owner{Field: "bench-flux", Group: "bench.fluxcd.io"})
	manager.SetConcurrency(concurrency)
	options := ssa.DefaultApplyOptions()
	options.Force = false
	_, err = manager.ApplyAllStaged(ctx, objects, options)
	return err
}

var probe struct {
	namespace, names, work, file, webhook, secret string
	rounds                                        int
}

// waitFor watches a ConfigMap until its `greeting` is `want`.
func waitFor(ctx context.Context, maps corev1client.ConfigMapInterface, name, want string, since string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	w, err := maps.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: since})
	if err != nil {
		return err
	}
	defer w.Stop()
	for event := range w.ResultChan() {
		if cm, ok := event.Object.(*corev1.ConfigMap); ok && cm.Data["greeting"] == want {
			return nil
		}
	}
	return fmt.Errorf("%s/%s never held greeting %q", probe.namespace, name, want)
}

func selfheal(ctx context.Context, config *rest.Config) error {
	core, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	maps := core.CoreV1().ConfigMaps(probe.namespace)
	for _, name := range strings.Split(probe.names, ",") {
		before, err := maps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		patch := []byte(`{"data":{"greeting":"edited by hand"}}`)
		edited, err := maps.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kubectl-edit"})
		if err != nil {
			return err
		}
		start := time.Now()
		if err := waitFor(ctx, maps, name, before.Data["greeting"], edited.ResourceVersion); err != nil {
			return err
		}
		fmt.Println(time.Since(start).Microseconds())
	}
	return nil
}

func git(args ...string) error {
	cmd := exec.Command("git", args...)
	cmd.Dir = probe.work
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@tidegate.invalid",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@tidegate.invalid")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %v: %w: %s", args, err, out)
	}
	return nil
}

func push(ctx context.Context, config *rest.Config) error {
	core, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	maps := core.CoreV1().ConfigMaps(probe.namespace)
	path := filepath.Join(probe.work, probe.file)
	original, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	at := regexp.MustCompile(`greeting: .*`)
	for i := range probe.rounds {
		want := fmt.Sprintf("push-%d-%d", time.Now().UnixNano(), i)
		if err := os.WriteFile(path, at.ReplaceAll(original, []byte("greeting: "+want)), 0o644); err != nil {
			return err
		}
		if err := git("commit", "--quiet", "-am", want); err != nil {
			return err
		}
		current, err := maps.Get(ctx, probe.names, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := git("push", "--quiet", "origin", "HEAD:main"); err != nil {
			return err
		}
		start := time.Now()
		if probe.webhook != "" {
			body := []byte(`{"ref":"refs/heads/main"}`)
			mac := hmac.New(sha256.New, []byte(probe.secret))
			mac.Write(body)
			req, _ := http.NewRequest("POST", probe.webhook, bytes.NewReader(body))
			req.Header.Set("X-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("webhook answered %s", resp.Status)
			}
		}
		if err := waitFor(ctx, maps, probe.names, want, current.ResourceVersion); err != nil {
			return err
		}
		fmt.Println(time.Since(start).Microseconds())
	}
	return nil
}
