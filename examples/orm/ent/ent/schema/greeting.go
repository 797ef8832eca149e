// Package schema is the ent schema of the example: one entity, so that ent
// generates a client. An application has its own schema here.
package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/schema/field"
)

// Greeting holds the schema definition for the Greeting entity.
type Greeting struct {
	ent.Schema
}

// Fields of the Greeting.
func (Greeting) Fields() []ent.Field {
	return []ent.Field{
		field.String("text"),
	}
}
