// Package proxy is a local PostgreSQL proxy that logs clients in to Azure
// Database for PostgreSQL with Microsoft Entra ID tokens, for tools that
// cannot run a command for their password: DBeaver, DataGrip, pg_dump in a
// cron job, an application in another language. It is the engine of
// "pgentra proxy".
//
// A client connects to the proxy as to any PostgreSQL server. The proxy
// reads its startup message (answering SSLRequest with TLS when
// Config.TLSConfig is set, else 'N', and GSSENCRequest with 'N'; a client
// opening with TLS at once, PostgreSQL 17's direct TLS, gets it too, with
// ALPN "postgresql"), checks the optional local password (with
// SCRAM-SHA-256 unless Config.LocalAuth says otherwise), and logs in to the upstream server with
// pgconn: a token from the Config.TokenSource (one cache for every session)
// as the password, the token's principal as the user (unless Config.User
// or the upstream connection string names one), the client's database and
// startup parameters (application_name, options, …), and the upstream
// connection string's TLS settings (verify-full recommended). It then hands
// the client AuthenticationOk, the upstream's ParameterStatus messages
// and notices, a BackendKeyData and ReadyForQuery, and relays bytes both
// ways until either side ends, when it closes both.
//
// Cancel requests work: each session's client gets a key with the
// upstream backend's real process ID (so clients can recognise their own
// notifications) and a random secret of the proxy's own, which the proxy
// maps to the upstream backend's key, so a CancelRequest reaches the right
// backend, over TLS when the session used TLS.
//
// A failure to open the upstream session (credential, TLS, login) reaches
// the client as an ErrorResponse with the reason, however long the token
// took (Config.ConnectTimeout bounds it, not StartupTimeout); a client
// that leaves meanwhile ends the wait. Shutdown works like PostgreSQL's
// smart shutdown: new sessions are refused with 57P03 and cancel requests
// are still forwarded while open sessions finish.
//
// For health checks and metrics, Server.Stats counts sessions open,
// opened and failed (by FailureReason), bytes relayed (as they are
// relayed, with an atomic add per write), upstream logins by duration and
// the TokenSource's fetches and expiry; Server.CheckUpstream logs in once,
// as a session would, and is what pgentra proxy's --run-connection-test
// and /readiness use.
//
// The token never appears in a log line or an error. Anyone who can
// connect to the proxy acts as its identity: listen on loopback or a unix
// socket, and set Config.LocalPassword on shared machines.
package proxy
