package proxy

import (
	"context"
)

// CheckUpstream logs in to the upstream server once, as a session would:
// with a token from the TokenSource (the cached one when it is usable),
// the configured user, and Upstream's database, else "postgres" (which
// every Azure Database for PostgreSQL server has). It then closes the
// connection. The wait is bounded by ctx and by Config.ConnectTimeout.
// A success counts in Stats.LastLogin and Stats.Logins, not as a session;
// a failure is returned and counted nowhere. A login the server refused
// is an *entraauth.LoginError (see entraauth.Explain). Its error never
// holds the token.
//
// It is the check behind pgentra proxy's --run-connection-test and
// /readiness.
func (s *Server) CheckUpstream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	database := s.base.Database
	if database == "" {
		database = "postgres"
	}
	up, err := s.dialUpstream(ctx, nil, database, map[string]string{"application_name": "pgentra proxy check"})
	if err != nil {
		return s.explain(err)
	}
	// A Terminate first, so the server logs a clean end rather than an
	// unexpected EOF.
	_, _ = up.conn.Write([]byte{'X', 0, 0, 0, 4})
	return up.conn.Close()
}
