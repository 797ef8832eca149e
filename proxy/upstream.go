package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// upstream is a logged-in upstream session, taken from pgconn for relaying.
type upstream struct {
	conn     net.Conn // TLS unless the upstream is a unix socket
	params   map[string]string
	txStatus byte
	user     string
	cancel   *cancelTarget
}

// clientOnlyParams are startup parameters the proxy handles itself rather
// than passing upstream.
var clientOnlyParams = map[string]bool{"user": true, "database": true}

// dialUpstream logs in to the upstream server for a client, with a token
// from the TokenSource, the client's database and startup parameters, and
// the user the proxy is configured for (else the token's principal).
func (s *Server) dialUpstream(ctx context.Context, database string, params map[string]string) (*upstream, error) {
	cfg := s.base.Copy()
	if s.cfg.User != "" {
		cfg.User = s.cfg.User
	}
	// Otherwise the user is Upstream's (or PGUSER's) if it names one, else
	// the TokenSource derives it from the token, by the library's rules.
	if database != "" {
		cfg.Database = database
	}
	rp := make(map[string]string, len(cfg.RuntimeParams)+len(params))
	for k, v := range cfg.RuntimeParams {
		rp[k] = v
	}
	for k, v := range params {
		if !clientOnlyParams[k] {
			rp[k] = v
		}
	}
	cfg.RuntimeParams = rp
	if err := s.cfg.TokenSource.BeforeConnect(ctx, cfg); err != nil {
		return nil, &upstreamError{stage: "getting an Entra token", err: err}
	}
	pc, err := pgconn.ConnectConfig(ctx, &cfg.Config)
	if err != nil {
		return nil, &upstreamError{stage: "connecting to the upstream server", err: err}
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, &upstreamError{stage: "taking over the upstream connection", err: err}
	}
	return &upstream{
		conn:     hc.Conn,
		params:   hc.ParameterStatuses,
		txStatus: hc.TxStatus,
		user:     cfg.User,
		cancel:   newCancelTarget(hc),
	}, nil
}

// upstreamError is a failure to open an upstream session. It never holds
// the token: neither entraauth's nor pgconn's errors contain a password.
type upstreamError struct {
	stage string
	err   error
}

func (e *upstreamError) Error() string { return e.stage + ": " + e.err.Error() }

func (e *upstreamError) Unwrap() error { return e.err }

// response is the ErrorResponse the client gets: the upstream server's own
// error when it refused the login, else one saying what failed.
func (e *upstreamError) response() *pgproto3.ErrorResponse {
	var pgErr *pgconn.PgError
	if errors.As(e.err, &pgErr) {
		detail := pgErr.Detail
		if detail == "" {
			detail = "Reported by the upstream server through pgentra proxy."
		}
		return &pgproto3.ErrorResponse{
			Severity: pgErr.Severity, SeverityUnlocalized: pgErr.SeverityUnlocalized,
			Code: pgErr.Code, Message: pgErr.Message, Detail: detail, Hint: pgErr.Hint,
		}
	}
	code := "08001" // sqlclient_unable_to_establish_sqlconnection
	if e.stage == "getting an Entra token" {
		code = "28000" // invalid_authorization_specification
	}
	return &pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code,
		Message: oneLine(fmt.Sprintf("pgentra proxy: %s", e.Error())),
	}
}
