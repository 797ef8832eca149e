package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/pgentra/entraauth/examples/orm/internal/exampletest"
)

// TestMain fails the tests if the program leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEmulator(t *testing.T) { exampletest.Emulator(t, run) }

func TestAzure(t *testing.T) { exampletest.Azure(t, run) }

func TestTokensRotating(t *testing.T) { exampletest.TokensRotating(t, upAndDown) }

// TestURLThroughProxy: the CLI way, pgx's own driver and a URL, works
// against pgentra proxy.
func TestURLThroughProxy(t *testing.T) { exampletest.ThroughProxy(t, upAndDown) }
