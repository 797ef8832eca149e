// Package compat proves that pgentra proxy is indistinguishable from a
// direct connection for real clients. It holds only tests:
//
//   - pgxsuite_test.go runs pgx v5.12.0's own test suite twice against one
//     real PostgreSQL 15 over TLS, directly and through the proxy, and
//     fails on any test that fails only through the proxy, apart from the
//     exceptions listed in exceptions_test.go (and in the README). It is
//     slow, so it runs only with ENTRAAUTH_PGX_SUITE=1; .ci/run sets it.
//   - clients_test.go runs psql, psycopg2 and node-postgres directly and
//     through the proxy while the server ends their session
//     (pg_terminate_backend, idle_session_timeout), and checks each exits
//     promptly with the same error both ways.
package compat
