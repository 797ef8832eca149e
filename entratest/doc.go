// Package entratest is a test kit for code that connects to Azure Database
// for PostgreSQL with Microsoft Entra ID tokens. It emulates, offline and on
// loopback only, the pieces such code talks to, so tests run without an
// Azure account, a network or a cloud bill:
//
//   - [Issuer] mints Entra-shaped access tokens (RS256 JWTs with the claims
//     real tokens have: aud, iss, tid, oid, upn, appid, xms_mirid, …) for a
//     [Principal] — a [User], a [ManagedIdentity] or a [ServicePrincipal] —
//     and verifies them the way a resource server does, with errors that say
//     why a token was rejected (ErrTokenExpired, ErrWrongAudience, …).
//
//   - [Credential] is an in-process azcore.TokenCredential on an Issuer that
//     can be made slow ([Credential.SetLatency]), failing
//     ([Credential.FailWith]) or hanging ([Credential.Hang]), and counts its
//     calls.
//
//   - [ManagedIdentityEndpoint] emulates Azure App Service's managed identity
//     endpoint (IDENTITY_ENDPOINT, IDENTITY_HEADER), so the real
//     azidentity.ManagedIdentityCredential and DefaultAzureCredential get
//     their tokens from it.
//
//   - [AzureCLI] is a fake az executable, so the real
//     azidentity.AzureCLICredential gets its tokens from it.
//
//   - [Server] speaks the PostgreSQL wire protocol, accepts an Entra token
//     as the password (or through SASL OAUTHBEARER, as PostgreSQL 18 asks),
//     checks it the way Azure Database for PostgreSQL does (signature,
//     audience, expiry, and a role registered for the token's object ID),
//     answers failures with Azure's messages, and relays accepted sessions
//     to a real PostgreSQL server (a throwaway one it starts from local
//     binaries when none is given). [Server.Stats] counts logins, distinct
//     tokens, rejections by reason, and passwords that arrived without TLS.
//
// An end-to-end test of a pgx pool or database/sql wiring:
//
//	ctx := context.Background()
//	iss, err := entratest.NewIssuer()
//	if err != nil {
//		t.Fatal(err)
//	}
//	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss})
//	if err != nil {
//		t.Fatal(err) // errors.Is(err, entratest.ErrNoPostgreSQL) without binaries
//	}
//	t.Cleanup(func() { srv.Close() })
//	alice := entratest.User("alice@contoso.com")
//	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
//		t.Fatal(err)
//	}
//	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, alice)))
//	t.Cleanup(func() { db.Close() })
//	var user string
//	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&user); err != nil {
//		t.Fatal(err)
//	}
//
// NewServer starts a throwaway PostgreSQL, which takes a second or more.
// To pay that once per package rather than once per test, share one
// server with [Shared]:
//
//	var emulator entratest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(entratest.RunTests(m, &emulator)) }
//
//	func TestOrders(t *testing.T) {
//		ctx := context.Background()
//		srv, iss := emulator.Get(t), emulator.Issuer(t)
//		alice := entratest.User("alice@contoso.com")
//		if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
//			t.Fatal(err)
//		}
//		db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, alice)))
//		t.Cleanup(func() { db.Close() })
//		// … the code under test, with db; for example:
//		if err := db.PingContext(ctx); err != nil {
//			t.Fatal(err)
//		}
//	}
//
// A test of code taking a credential:
//
//	iss, err := entratest.NewIssuer()
//	if err != nil {
//		t.Fatal(err)
//	}
//	cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
//	cred.SetLifetime(time.Minute)
//	// … hand cred to the code under test, then look at cred.Calls(),
//	// cred.Scopes() and the tokens with iss.Verify(token, entratest.ScopePublic).
//
// A test through the real Azure SDK credentials:
//
//	mi, err := entratest.NewManagedIdentityEndpoint(iss, entratest.ManagedIdentity("app-identity"))
//	if err != nil {
//		t.Fatal(err)
//	}
//	t.Cleanup(mi.Close)
//	mi.Setenv(t) // IDENTITY_ENDPOINT, IDENTITY_HEADER for this test
//	miCred, err := azidentity.NewManagedIdentityCredential(nil)
//
//	az, err := entratest.NewAzureCLI(iss, entratest.User("alice@contoso.com"))
//	if err != nil {
//		t.Fatal(err)
//	}
//	t.Cleanup(az.Close)
//	az.Setenv(t) // the fake az first on PATH for this test
//	cliCred, err := azidentity.NewAzureCLICredential(nil)
//
// Things to know about the real credentials: MSAL Go, under
// azidentity.ManagedIdentityCredential, caches managed identity tokens for
// the whole process (see [ManagedIdentityEndpoint] for why the endpoint's
// tokens are short-lived by default); on a machine where the IMDS address
// 169.254.169.254 answers, DefaultAzureCredential stops at managed identity
// unless IDENTITY_ENDPOINT is set or AZURE_TOKEN_CREDENTIALS picks another
// credential ("dev", or a credential's name such as "AzureCLICredential").
//
// Nothing here ever prints a token: errors name claims and times, never the
// token itself.
package entratest
