package main

// `up`: run embedded etcd in this process, start the other components as
// children, and stop everything together.

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	serviceCIDR = "10.0.0.0/16"
	serviceIP   = "10.0.0.1"
)

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[controlplane %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error
}

func startChild(dir, name string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "logs", name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Children die with the supervisor even if it is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	logf("started %s (pid %d, log %s)", name, cmd.Process.Pid, logPath)
	return c, nil
}

func (c *child) exited(dir string) error {
	return fmt.Errorf("%s exited (%v), see %s", c.name, c.err, filepath.Join(dir, "logs", c.name+".log"))
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func writeKubeconfig(path string, p pki, port int) error {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(p.path(name))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read("admin.crt")
	if err != nil {
		return err
	}
	key, err := read("admin.key")
	if err != nil {
		return err
	}
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tidegate-test
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: tidegate-test
  context:
    cluster: tidegate-test
    user: admin
current-context: tidegate-test
`, port, ca, crt, key)
	return os.WriteFile(path, []byte(content), 0o600)
}

func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "tidegate-test"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "logs", "etcd.log")}
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// A test cluster: durability across power loss does not matter, speed does.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd did not become ready within 60s")
	}
}

func waitFor(ctx context.Context, what string, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: not ready after %s: %v", what, timeout, last)
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dirFlag := fs.String("dir", "", "state directory (certificates, etcd data, logs, kubeconfig)")
	nodes := fs.Int("nodes", 1, "number of fake nodes")
	exitOnStdinClose := fs.Bool("exit-on-stdin-close", false, "shut down when standard input closes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dirFlag == "" {
		return errors.New("--dir is required")
	}
	dir, err := filepath.Abs(*dirFlag)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	readyPath := filepath.Join(dir, "ready")
	_ = os.Remove(readyPath)
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if *exitOnStdinClose {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			logf("standard input closed, shutting down")
			cancel()
		}()
	}

	p := pki{dir: filepath.Join(dir, "pki")}
	if err := p.generate(); err != nil {
		return fmt.Errorf("generate certificates: %w", err)
	}
	etcdClient, err := freePort()
	if err != nil {
		return err
	}
	etcdPeer, err := freePort()
	if err != nil {
		return err
	}
	apiPort, err := freePort()
	if err != nil {
		return err
	}

	started := time.Now()
	etcd, err := startEtcd(dir, etcdClient, etcdPeer)
	if err != nil {
		return err
	}
	defer etcd.Close()
	logf("etcd ready on 127.0.0.1:%d", etcdClient)

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, p, apiPort); err != nil {
		return err
	}

	var children []*child
	defer func() {
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop()
		}
		_ = os.Remove(readyPath)
		logf("stopped")
	}()

	apiserverProc, err := startChild(dir, "kube-apiserver",
		"--etcd-servers=http://127.0.0.1:"+strconv.Itoa(etcdClient),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+p.dir,
		"--tls-cert-file="+p.path("apiserver.crt"),
		"--tls-private-key-file="+p.path("apiserver.key"),
		"--client-ca-file="+p.path("ca.crt"),
		"--service-account-key-file="+p.path("sa.pub"),
		"--service-account-signing-key-file="+p.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+serviceCIDR,
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	children = append(children, apiserverProc)

	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.QPS, config.Burst = 200, 400
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	err = waitFor(ctx, "kube-apiserver /readyz", 3*time.Minute, func(ctx context.Context) error {
		select {
		case <-apiserverProc.done:
			return apiserverProc.exited(dir)
		default:
		}
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
	if err != nil {
		return err
	}
	logf("kube-apiserver ready on https://127.0.0.1:%d", apiPort)

	common := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
	}
	cm, err := startChild(dir, "kube-controller-manager", append(common,
		"--service-account-private-key-file="+p.path("sa.key"),
		"--root-ca-file="+p.path("ca.crt"),
		"--service-cluster-ip-range="+serviceCIDR,
		// Fake nodes send no heartbeats; without this controller they stay Ready.
		"--controllers=*,-nodelifecycle",
	)...)
	if err != nil {
		return err
	}
	children = append(children, cm)
	sched, err := startChild(dir, "kube-scheduler", common...)
	if err != nil {
		return err
	}
	children = append(children, sched)

	kubeletErr := make(chan error, 1)
	go func() { kubeletErr <- runFakeKubelet(ctx, client, *nodes) }()

	err = waitFor(ctx, "a Ready node and the default ServiceAccount", 3*time.Minute, func(ctx context.Context) error {
		nodeList, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, n := range nodeList.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					ready = true
				}
			}
		}
		if !ready {
			return errors.New("no Ready node yet")
		}
		_, err = client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(readyPath, []byte(kubeconfig+"\n"), 0o644); err != nil {
		return err
	}
	logf("ready in %.1fs", time.Since(started).Seconds())
	fmt.Printf("export KUBECONFIG=%s\n", kubeconfig)

	select {
	case <-ctx.Done():
		return nil
	case err := <-kubeletErr:
		return fmt.Errorf("fake kubelet stopped: %v", err)
	case <-apiserverProc.done:
		return apiserverProc.exited(dir)
	case <-cm.done:
		return cm.exited(dir)
	case <-sched.done:
		return sched.exited(dir)
	}
}
