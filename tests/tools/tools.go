//go:build tools

// The generators the tests and the demo build with, pinned here in a module
// of their own so that changing one never rebuilds the control plane.
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
