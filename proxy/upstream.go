package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

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
	// notices are the NoticeResponse messages the upstream sent during
	// its login, for the client before its ReadyForQuery; later are the
	// asynchronous messages (notices, notifications) pgconn read after
	// ReadyForQuery, for the client after it. Both are encoded.
	notices, later []byte
}

// clientOnlyParams are startup parameters the proxy handles itself rather
// than passing upstream.
var clientOnlyParams = map[string]bool{"user": true, "database": true}

// withUser names user in the connection string connString (a URL or
// key/value), so the TokenSource sees a named user even when it is the
// OS user's name, which pgx fills in when none is named. The last user
// setting wins in both forms.
func withUser(connString, user string) string {
	if user == "" {
		return connString
	}
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		sep := "?"
		if strings.Contains(connString, "?") {
			sep = "&"
		}
		return connString + sep + "user=" + url.QueryEscape(user)
	}
	return connString + " user='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(user) + "'"
}

// dialUpstream logs in to the upstream server for a client, with a token
// from the TokenSource, the client's database and startup parameters, and
// the user the proxy is configured for: Config.User, named in s.base's
// connection string, else Upstream's (or PGUSER's), else the token's
// principal, which the TokenSource derives by the library's rules. With
// StrictUser, a client naming another user is refused before the login.
// clientUser is nil for CheckUpstream, which has no client to refuse.
// A successful login is counted in Stats.LastLogin and Stats.Logins.
func (s *Server) dialUpstream(ctx context.Context, clientUser *string, database string, params map[string]string) (*upstream, error) {
	start := time.Now()
	cfg := s.base.Copy()
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
		return nil, &upstreamError{stage: stageToken, err: err}
	}
	if s.cfg.StrictUser && clientUser != nil && *clientUser != cfg.User {
		return nil, &clientError{code: "28000", // invalid_authorization_specification
			msg:  fmt.Sprintf("pgentra proxy: user %q is not this proxy's user: sessions log in as %q", *clientUser, cfg.User),
			hint: fmt.Sprintf("Connect with user=%s, or run the proxy without --strict-user to ignore the client's user name.", cfg.User)}
	}
	// What pgconn reads and would otherwise drop goes to the client:
	// notices during the login, and anything the server sent right after
	// its ReadyForQuery, which SyncConn reads before the hijack.
	up := &upstream{user: cfg.User}
	loggedIn := false
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		msg := noticeResponse(n)
		if loggedIn {
			up.later, _ = msg.Encode(up.later)
		} else {
			up.notices, _ = msg.Encode(up.notices)
		}
	}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		up.later, _ = (&pgproto3.NotificationResponse{PID: n.PID, Channel: n.Channel, Payload: n.Payload}).Encode(up.later)
	}
	pc, err := pgconn.ConnectConfig(ctx, &cfg.Config)
	if err != nil {
		return nil, &upstreamError{stage: "connecting to the upstream server", err: err}
	}
	loggedIn = true
	// pgconn may have read past ReadyForQuery; SyncConn hands those
	// messages to the callbacks above, as Hijack's doc requires.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(context.Background())
		return nil, &upstreamError{stage: "connecting to the upstream server", err: err}
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, &upstreamError{stage: "taking over the upstream connection", err: err}
	}
	up.conn, up.params, up.txStatus, up.cancel = hc.Conn, hc.ParameterStatuses, hc.TxStatus, newCancelTarget(hc)
	s.countLogin(time.Since(start))
	return up, nil
}

// noticeResponse turns a notice pgconn decoded back into the message.
func noticeResponse(n *pgconn.Notice) *pgproto3.NoticeResponse {
	return &pgproto3.NoticeResponse{
		Severity: n.Severity, SeverityUnlocalized: n.SeverityUnlocalized, Code: n.Code, Message: n.Message,
		Detail: n.Detail, Hint: n.Hint, Position: n.Position, InternalPosition: n.InternalPosition,
		InternalQuery: n.InternalQuery, Where: n.Where, SchemaName: n.SchemaName, TableName: n.TableName,
		ColumnName: n.ColumnName, DataTypeName: n.DataTypeName, ConstraintName: n.ConstraintName,
		File: n.File, Line: n.Line, Routine: n.Routine,
	}
}

// stageToken is the stage of an upstreamError getting the token.
const stageToken = "getting an Entra token"

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
	if e.stage == stageToken {
		code = "28000" // invalid_authorization_specification
	}
	return &pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code,
		Message: oneLine(fmt.Sprintf("pgentra proxy: %s", e.Error())),
	}
}
