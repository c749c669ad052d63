// Command tidegate-controlplane is a real Kubernetes control plane for tests and
// demos, built from the Kubernetes Go modules: embedded etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and fake nodes, plus kubectl.
//
// It is one multi-call binary. `up` supervises the control plane and starts each
// component as a child process of the same binary, so their global state (flags,
// feature gates, metrics registries) stays apart.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: tidegate-controlplane <command> [args]

commands:
  up --dir DIR [--nodes N] [--exit-on-stdin-close]
                       start etcd, kube-apiserver, kube-controller-manager,
                       kube-scheduler and N fake nodes; write DIR/kubeconfig;
                       create DIR/ready once /readyz is ok and a node is Ready
  kubectl ARGS...      run kubectl
  kube-apiserver ARGS...           (started by up)
  kube-controller-manager ARGS...  (started by up)
  kube-scheduler ARGS...           (started by up)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	command, args := os.Args[1], os.Args[2:]
	switch command {
	case "up":
		if err := up(args); err != nil {
			fmt.Fprintf(os.Stderr, "tidegate-controlplane up: %v\n", err)
			os.Exit(1)
		}
	case "kubectl":
		cmd := kubectlcmd.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n%s", command, usage)
		os.Exit(2)
	}
}
