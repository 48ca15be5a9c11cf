package kubernetes

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/oceanum-dmfs/dmfs/csi"
)

// The manifests are decoded strictly (an unknown or misspelt field, a
// duplicate key or a wrong type fails) into the Kubernetes API's own Go
// types, then checked against each other: what a cluster would only reject
// or, worse, accept and misrun, at apply time.

// manifests are the decoded documents of every YAML file here, by file.
type manifests struct {
	files       map[string][]any
	namespaces  map[string]*corev1.Namespace
	accounts    map[string]*corev1.ServiceAccount // by namespace/name
	drivers     []*storagev1.CSIDriver
	daemonSets  []*appsv1.DaemonSet
	podSpecs    map[string]*corev1.PodSpec // by file: kind/name
	pvs         map[string]*corev1.PersistentVolume
	pvcs        []*corev1.PersistentVolumeClaim
	kustomize   *kustomization
	driverNames map[string]bool
}

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// splitDocuments cuts a multi-document YAML file at its "---" lines.
func splitDocuments(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func load(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{files: map[string][]any{}, namespaces: map[string]*corev1.Namespace{},
		accounts: map[string]*corev1.ServiceAccount{}, podSpecs: map[string]*corev1.PodSpec{},
		pvs: map[string]*corev1.PersistentVolume{}, driverNames: map[string]bool{}}
	names, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, names)
	for _, name := range names {
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		for i, doc := range splitDocuments(b) {
			var tm metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal(doc, &tm), "%s #%d", name, i)
			where := name + ": " + tm.APIVersion + "/" + tm.Kind
			var obj any
			switch tm.APIVersion + "/" + tm.Kind {
			case "v1/Namespace":
				obj = &corev1.Namespace{}
			case "v1/ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "v1/Pod":
				obj = &corev1.Pod{}
			case "v1/Service":
				obj = &corev1.Service{}
			case "v1/PersistentVolume":
				obj = &corev1.PersistentVolume{}
			case "v1/PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "storage.k8s.io/v1/CSIDriver":
				obj = &storagev1.CSIDriver{}
			case "apps/v1/DaemonSet":
				obj = &appsv1.DaemonSet{}
			case "apps/v1/Deployment":
				obj = &appsv1.Deployment{}
			case "kustomize.config.k8s.io/v1beta1/Kustomization":
				obj = &kustomization{}
			default:
				t.Fatalf("%s: a kind this test does not know", where)
			}
			require.NoError(t, yaml.UnmarshalStrict(doc, obj), where)
			m.files[name] = append(m.files[name], obj)
			switch o := obj.(type) {
			case *corev1.Namespace:
				m.namespaces[o.Name] = o
			case *corev1.ServiceAccount:
				m.accounts[o.Namespace+"/"+o.Name] = o
			case *corev1.Pod:
				m.podSpecs[name+": Pod/"+o.Name] = &o.Spec
			case *appsv1.Deployment:
				m.podSpecs[name+": Deployment/"+o.Name] = &o.Spec.Template.Spec
				assert.Equal(t, o.Spec.Selector.MatchLabels, o.Spec.Template.Labels, "%s %s: selector", where, o.Name)
			case *appsv1.DaemonSet:
				m.daemonSets = append(m.daemonSets, o)
				m.podSpecs[name+": DaemonSet/"+o.Name] = &o.Spec.Template.Spec
			case *corev1.PersistentVolume:
				m.pvs[o.Name] = o
			case *corev1.PersistentVolumeClaim:
				m.pvcs = append(m.pvcs, o)
			case *storagev1.CSIDriver:
				m.drivers = append(m.drivers, o)
				m.driverNames[o.Name] = true
			case *kustomization:
				require.Nil(t, m.kustomize, "one kustomization")
				m.kustomize = o
			}
			if tm.Kind != "Kustomization" {
				meta := obj.(metav1.ObjectMetaAccessor).GetObjectMeta()
				assert.NotEmpty(t, meta.GetName(), "%s: metadata.name", where)
			}
		}
	}
	return m
}

func TestCSIDriver(t *testing.T) {
	m := load(t)
	require.Len(t, m.drivers, 1)
	d := m.drivers[0]
	assert.Equal(t, csi.DefaultDriverName, d.Name, "the name `dmfs csi` reports by default")
	require.NotNil(t, d.Spec.AttachRequired)
	assert.False(t, *d.Spec.AttachRequired, "no controller: nothing attaches")
	assert.ElementsMatch(t, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral, storagev1.VolumeLifecyclePersistent},
		d.Spec.VolumeLifecycleModes)
	require.NotNil(t, d.Spec.RequiresRepublish)
	assert.True(t, *d.Spec.RequiresRepublish, "republishing heals a mount whose process died")
	require.NotNil(t, d.Spec.FSGroupPolicy)
	assert.Equal(t, storagev1.NoneFSGroupPolicy, *d.Spec.FSGroupPolicy)
}

// volumeByName returns the pod's volume called name.
func volumeByName(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// flagValue returns --name=VALUE's value among args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// hostPathOf maps a path inside container c to the node's path, through
// its hostPath volumes.
func hostPathOf(spec *corev1.PodSpec, c *corev1.Container, p string) (string, bool) {
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		if v := volumeByName(spec, vm.Name); v != nil && v.HostPath != nil {
			return path.Join(v.HostPath.Path, rel), true
		}
	}
	return "", false
}

func TestNodeDaemonSet(t *testing.T) {
	m := load(t)
	require.Len(t, m.daemonSets, 1)
	ds := m.daemonSets[0]
	spec := &ds.Spec.Template.Spec
	assert.Equal(t, ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels, "the selector picks the pods")
	ns, ok := m.namespaces[ds.Namespace]
	require.True(t, ok, "namespace %q is in the manifests", ds.Namespace)
	assert.Equal(t, "privileged", ns.Labels["pod-security.kubernetes.io/enforce"], "the plugin's namespace admits a privileged pod")
	_, ok = m.accounts[ds.Namespace+"/"+spec.ServiceAccountName]
	assert.True(t, ok, "service account %q is in the manifests", spec.ServiceAccountName)

	var plugin, registrar *corev1.Container
	for i := range spec.Containers {
		switch spec.Containers[i].Name {
		case "dmfs-csi":
			plugin = &spec.Containers[i]
		case "node-driver-registrar":
			registrar = &spec.Containers[i]
		}
	}
	require.NotNil(t, plugin)
	require.NotNil(t, registrar)

	// The plugin: `dmfs csi`, privileged, /dev/fuse, the kubelet's pod
	// directory with Bidirectional propagation, the node name.
	require.NotEmpty(t, plugin.Args)
	assert.Equal(t, "csi", plugin.Args[0], "the image's entrypoint is dmfs")
	require.NotNil(t, plugin.SecurityContext)
	require.NotNil(t, plugin.SecurityContext.Privileged)
	assert.True(t, *plugin.SecurityContext.Privileged)
	nodeID, _ := flagValue(plugin.Args, "node-id")
	assert.Equal(t, "$(KUBE_NODE_NAME)", nodeID)
	var nodeNameFromSpec bool
	for _, e := range plugin.Env {
		if e.Name == "KUBE_NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			nodeNameFromSpec = e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}
	}
	assert.True(t, nodeNameFromSpec, "KUBE_NODE_NAME comes from spec.nodeName")
	propagation := map[string]corev1.MountPropagationMode{}
	for _, vm := range plugin.VolumeMounts {
		if vm.MountPropagation != nil {
			propagation[vm.MountPath] = *vm.MountPropagation
		}
	}
	assert.Equal(t, corev1.MountPropagationBidirectional, propagation["/var/lib/kubelet/pods"])
	kubeletPods, ok := hostPathOf(spec, plugin, "/var/lib/kubelet/pods")
	assert.True(t, ok)
	assert.Equal(t, "/var/lib/kubelet/pods", kubeletPods, "targets have the same path in the plugin as on the node")
	fuse, ok := hostPathOf(spec, plugin, "/dev/fuse")
	assert.True(t, ok)
	assert.Equal(t, "/dev/fuse", fuse)
	_, limited := plugin.Resources.Limits[corev1.ResourceMemory]
	assert.False(t, limited, "every mount of the node lives in the plugin's container: a memory limit would kill them all")

	// The socket: the plugin's endpoint, the registrar's --csi-address and
	// its --kubelet-registration-path are one file on the node, in the
	// kubelet's plugin folder named after the driver.
	endpoint, ok := flagValue(plugin.Args, "endpoint")
	require.True(t, ok)
	sock := strings.TrimPrefix(endpoint, "unix://")
	require.True(t, strings.HasPrefix(endpoint, "unix:///"), endpoint)
	hostSock, ok := hostPathOf(spec, plugin, sock)
	require.True(t, ok, "the socket %s is on a hostPath volume", sock)
	assert.Equal(t, "/var/lib/kubelet/plugins/"+csi.DefaultDriverName+"/csi.sock", hostSock)
	addr, ok := flagValue(registrar.Args, "csi-address")
	require.True(t, ok)
	regSock, ok := hostPathOf(spec, registrar, addr)
	require.True(t, ok)
	assert.Equal(t, hostSock, regSock, "the registrar dials the plugin's socket")
	regPath, _ := flagValue(registrar.Args, "kubelet-registration-path")
	assert.Equal(t, hostSock, regPath, "the kubelet dials the plugin's socket")
	registration, ok := hostPathOf(spec, registrar, "/registration")
	assert.True(t, ok)
	assert.Equal(t, "/var/lib/kubelet/plugins_registry", registration)

	// The state folder survives the container: it is on the node.
	state, ok := flagValue(plugin.Args, "state-dir")
	require.True(t, ok)
	_, ok = hostPathOf(spec, plugin, state)
	assert.True(t, ok, "--state-dir %s is on a hostPath volume", state)
}

func TestPodsUseTheDriver(t *testing.T) {
	m := load(t)
	csiVolumes := 0
	for where, spec := range m.podSpecs {
		containers := append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...)
		for _, c := range containers {
			for _, vm := range c.VolumeMounts {
				v := volumeByName(spec, vm.Name)
				require.NotNil(t, v, "%s: container %s mounts volume %q, which the pod does not have", where, c.Name, vm.Name)
				dmfs := v.CSI != nil
				if pvc := v.PersistentVolumeClaim; pvc != nil {
					dmfs = pvcUsesDriver(t, m, pvc.ClaimName)
				}
				if dmfs {
					require.NotNil(t, vm.MountPropagation, "%s: %s should mount with HostToContainer, so a replaced mount reaches it", where, vm.Name)
					assert.Equal(t, corev1.MountPropagationHostToContainer, *vm.MountPropagation, where)
				}
			}
		}
		for _, v := range spec.Volumes {
			if v.CSI == nil {
				continue
			}
			csiVolumes++
			assert.True(t, m.driverNames[v.CSI.Driver], "%s: volume %s names driver %q", where, v.Name, v.CSI.Driver)
			assert.NoError(t, csi.CheckAttributes(v.CSI.VolumeAttributes), "%s: volume %s", where, v.Name)
			require.NotNil(t, v.CSI.NodePublishSecretRef, "%s: volume %s needs the token's Secret", where, v.Name)
			assert.NotEmpty(t, v.CSI.NodePublishSecretRef.Name)
		}
	}
	assert.GreaterOrEqual(t, csiVolumes, 2, "the inline pod and the Dask workers")
	require.NotEmpty(t, m.pvs)
	for _, pv := range m.pvs {
		require.NotNil(t, pv.Spec.CSI, pv.Name)
		assert.True(t, m.driverNames[pv.Spec.CSI.Driver], pv.Name)
		assert.NotEmpty(t, pv.Spec.CSI.VolumeHandle, pv.Name)
		assert.NoError(t, csi.CheckAttributes(pv.Spec.CSI.VolumeAttributes), pv.Name)
		require.NotNil(t, pv.Spec.CSI.NodePublishSecretRef, pv.Name)
		assert.NotEmpty(t, pv.Spec.CSI.NodePublishSecretRef.Namespace, "%s: a PersistentVolume's Secret names its namespace", pv.Name)
		assert.Equal(t, "", pv.Spec.StorageClassName, "%s: static, never provisioned", pv.Name)
	}
}

// pvcUsesDriver finds the claim, checks that it binds to its static volume,
// and says whether that volume is dmfs's.
func pvcUsesDriver(t *testing.T, m *manifests, claim string) bool {
	t.Helper()
	for _, pvc := range m.pvcs {
		if pvc.Name != claim {
			continue
		}
		pv, ok := m.pvs[pvc.Spec.VolumeName]
		require.True(t, ok, "claim %s binds volume %q, which is in the manifests", claim, pvc.Spec.VolumeName)
		require.NotNil(t, pvc.Spec.StorageClassName)
		assert.Equal(t, pv.Spec.StorageClassName, *pvc.Spec.StorageClassName, "claim %s and its volume", claim)
		assert.Subset(t, pv.Spec.AccessModes, pvc.Spec.AccessModes, "claim %s asks for modes its volume has", claim)
		return pv.Spec.CSI != nil && m.driverNames[pv.Spec.CSI.Driver]
	}
	t.Fatalf("claim %q is not in the manifests", claim)
	return false
}

func TestKustomizationInstallsTheDriver(t *testing.T) {
	m := load(t)
	require.NotNil(t, m.kustomize)
	var install []string
	for name := range m.files {
		if name != "kustomization.yaml" && !strings.HasPrefix(name, "example-") {
			install = append(install, name)
		}
	}
	sort.Strings(install)
	got := append([]string(nil), m.kustomize.Resources...)
	sort.Strings(got)
	assert.Equal(t, install, got, "kubectl apply -k installs every manifest but the examples")
}

func TestDockerfileBuildsTheEntrypoint(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	require.NoError(t, err)
	assert.Contains(t, string(b), "go build", "the image builds dmfs")
	assert.Regexp(t, `(?m)-o /out/dmfs \./cmd/dmfs$`, string(b))
	_, err = os.Stat("../../cmd/dmfs/main.go")
	assert.NoError(t, err, "the Dockerfile builds from the repository's root")
	assert.Contains(t, string(b), `ENTRYPOINT ["/usr/local/bin/dmfs"]`, "the DaemonSet's args start with the subcommand")
	assert.Contains(t, string(b), "COPY --from=build /out/dmfs /usr/local/bin/dmfs")
}
