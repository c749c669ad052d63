//go:build tools

// Package tools pins the sops command the tests encrypt files with.
package tools

import _ "github.com/getsops/sops/v3/cmd/sops"
