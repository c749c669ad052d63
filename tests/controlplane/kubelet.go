package main

// A fake kubelet: registers Ready nodes and moves the pods scheduled to them
// through their lifecycle, so Deployments become available, Jobs complete and
// namespaces finish deleting. No containers run.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

const kubeletVersion = "v1.34.4"

func fakeNode(name string) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("64"),
		corev1.ResourceMemory:           resource.MustParse("256Gi"),
		corev1.ResourcePods:             resource.MustParse("1000"),
		corev1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "fake",
			},
		},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses:   []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          kubeletVersion,
				OperatingSystem:         "linux",
				Architecture:            "amd64",
				ContainerRuntimeVersion: "fake://1.0.0",
			},
		},
	}
}

func nodeConditions() []corev1.NodeCondition {
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
	}
}

func registerNode(ctx context.Context, client kubernetes.Interface, name string) error {
	node, err := client.CoreV1().Nodes().Create(ctx, fakeNode(name), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	want := fakeNode(name)
	node.Status.Capacity = want.Status.Capacity
	node.Status.Allocatable = want.Status.Allocatable
	node.Status.Addresses = want.Status.Addresses
	node.Status.NodeInfo = want.Status.NodeInfo
	node.Status.Conditions = nodeConditions()
	node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("report status of node %s: %w", name, err)
	}
	// The TaintNodesByCondition admission plugin marks new nodes not-ready; a
	// kubelet's node controller would lift that once Ready, and that
	// controller is off here (fake nodes send no heartbeats).
	node.Spec.Taints = nil
	_, err = client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
	return err
}

type fakeKubelet struct {
	client kubernetes.Interface
	lister cache.Indexer
	queue  workqueue.TypedRateLimitingInterface[string]
	nextIP atomic.Uint32
}

func runFakeKubelet(ctx context.Context, client kubernetes.Interface, nodes int) error {
	for i := 1; i <= nodes; i++ {
		if err := registerNode(ctx, client, fmt.Sprintf("fake-node-%d", i)); err != nil {
			return err
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName!=" }))
	podInformer := factory.Core().V1().Pods().Informer()
	k := &fakeKubelet{
		client: client,
		lister: podInformer.GetIndexer(),
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	for w := 0; w < 4; w++ {
		go func() {
			for k.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	k.queue.ShutDown()
	return nil
}

func (k *fakeKubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

func (k *fakeKubelet) sync(ctx context.Context, key string) error {
	obj, exists, err := k.lister.GetByKey(key)
	if err != nil || !exists {
		return err
	}
	pod := obj.(*corev1.Pod)
	pods := k.client.CoreV1().Pods(pod.Namespace)
	if pod.DeletionTimestamp != nil {
		// What a kubelet does once the containers are gone: finish the graceful delete.
		zero := int64(0)
		err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	if pod.Status.Phase == corev1.PodPending && len(pod.Status.ContainerStatuses) > 0 {
		// Already refused its image.
		return nil
	}
	// A pod that completes (a Job's) may ask to run for a while first, so
	// tests can act while a Job, such as a Helm hook, is still running.
	completes := pod.Spec.RestartPolicy == corev1.RestartPolicyNever || pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure
	runFor := time.Duration(0)
	if text, ok := pod.Annotations[runSecondsAnnotation]; ok && completes {
		if n, err := strconv.Atoi(text); err == nil {
			runFor = time.Duration(n) * time.Second
		}
	}
	remaining := time.Until(pod.CreationTimestamp.Add(runFor))
	if pod.Status.Phase == corev1.PodRunning && (!completes || remaining > 0) {
		if remaining > 0 {
			k.queue.AddAfter(key, remaining)
		}
		return nil
	}
	updated := pod.DeepCopy()
	if remaining > 0 {
		k.setStatus(updated, false)
		k.queue.AddAfter(key, remaining)
	} else {
		k.setStatus(updated, completes)
	}
	_, err = pods.UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// runSecondsAnnotation on a Job's pod template keeps its pods running for
// that many seconds before they succeed.
const runSecondsAnnotation = "fake.tidegate.dev/run-seconds"

// refusedRegistry: images from it never pull, so their pods never become
// Ready (a rollout that cannot finish).
const refusedRegistry = "refused.invalid/"

// setStatus moves a pod to Running and Ready, or, when it completes (pods
// that do not restart, as Jobs'), to Succeeded.
func (k *fakeKubelet) setStatus(pod *corev1.Pod, completes bool) {
	now := metav1.Now()
	ip := k.nextIP.Add(1)
	pod.Status.HostIP = "127.0.0.1"
	pod.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	pod.Status.PodIP = fmt.Sprintf("10.244.%d.%d", (ip/250)%250, ip%250+1)
	pod.Status.PodIPs = []corev1.PodIP{{IP: pod.Status.PodIP}}
	pod.Status.StartTime = &now

	terminated := func(name, image string) corev1.ContainerStatus {
		return corev1.ContainerStatus{
			Name: name, Image: image, ImageID: "fake://" + image, ContainerID: "fake://" + name,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now,
			}},
		}
	}
	pod.Status.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		pod.Status.InitContainerStatuses = append(pod.Status.InitContainerStatuses, terminated(c.Name, c.Image))
	}
	pod.Status.ContainerStatuses = nil
	started := true
	refused := false
	for _, c := range pod.Spec.Containers {
		if strings.HasPrefix(c.Image, refusedRegistry) {
			refused = true
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
					Reason: "ErrImagePull", Message: "the fake nodes refuse images from " + refusedRegistry,
				}},
			})
			continue
		}
		if completes {
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, terminated(c.Name, c.Image))
			continue
		}
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "fake://" + c.Image, ContainerID: "fake://" + c.Name,
			Ready: true, Started: &started,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	ready := corev1.ConditionTrue
	pod.Status.Phase = corev1.PodRunning
	if refused {
		ready = corev1.ConditionFalse
		pod.Status.Phase = corev1.PodPending
	} else if completes {
		ready = corev1.ConditionFalse
		pod.Status.Phase = corev1.PodSucceeded
	}
	cond := func(t corev1.PodConditionType, s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	pod.Status.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, corev1.ConditionTrue),
		cond(corev1.PodInitialized, corev1.ConditionTrue),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
}
