package main

import (
	"strings"
	"testing"
)

func TestUser(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	mi := f.mi(t, identity)
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"user from the az token's claims", childEnv(pathWith(az.Dir()), "PGUSER=someone-else"), []string{"user", "--credential", "cli"}, alice.UPN},
		{"managed identity's name from xms_mirid", childEnv(miEnv(mi)...), []string{"user", "--credential", "managed-identity", "--client-id", identity.ClientID}, "cli-identity"},
		{"Service Connector variables", childEnv(append(miEnv(mi), "AZURE_POSTGRESQL_CONNECTIONSTRING="+f.srv.ConnString("user=aad_named"),
			"AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...), []string{"user"}, "cli-identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := pgentra(t, tt.env, tt.args...)
			if r.code != 0 || r.stdout != tt.want+"\n" || r.stderr != "" {
				t.Errorf("%+v; want %q on stdout", r, tt.want)
			}
		})
	}

	// Service Connector's password mode has no token.
	r := pgentra(t, childEnv("AZURE_POSTGRESQL_CONNECTIONSTRING=host=h password=pw-s3cret"), "user")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "password authentication") || strings.Contains(r.stderr, "s3cret") {
		t.Errorf("password mode: %+v", r)
	}
}
