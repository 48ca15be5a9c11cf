// Package kubernetes holds dmfs's Kubernetes deployment (the CSIDriver, the
// node plugin's DaemonSet, its namespace and service account, examples, and
// the image's Dockerfile); its test checks the manifests offline.
package kubernetes
