// Package ent is the client ent generates from ./schema. Regenerate it
// with go generate ./... in examples/orm. The sql/execquery feature gives
// the client QueryContext and ExecContext for raw SQL.
package ent

//go:generate go run -mod=mod entgo.io/ent/cmd/ent generate --feature sql/execquery ./schema
